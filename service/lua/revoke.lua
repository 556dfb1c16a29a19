-- Revoke one session (logout, session delete, RFC 7009 revoke of a refresh token).
-- KEYS: (common head: epoch gen events fence) session hash, the session's deny key,
--       the index of the user `uid`, the session's expiry shard
-- ARGV: (known_epoch known_gen retention) sid uid owner reason now deny_until force
-- uid: whose index KEYS[7] is (the owner, or the session's uid as the caller read it);
-- owner: the uid that must own the session ('' = any). force=1 denies the sid even when
-- its state is already gone (the caller proved it with a verified token).
-- Returns {1, gen, epoch} when revoked, {0} when there was nothing of the owner's,
-- {'stale'} when this Redis is behind the known position (a write here would raise gen
-- past it and hide the rollback from the fence).
local SESSION, DENY, INDEX, SHARD = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local sid, owner = ARGV[4], ARGV[6]
local ep, gen = position()
if is_behind(ep, gen) then return {'stale'} end
local uid = redis.call('HGET', SESSION, 'uid')
if not uid then
  if ARGV[10] ~= '1' or owner == '' then return {0} end
  uid = owner
elseif owner ~= '' and uid ~= owner then
  return {0}
end
-- the index in KEYS is the one of the uid the caller expected (a session's uid never changes)
if uid ~= ARGV[5] then return {0} end
revoke_session(SESSION, DENY, INDEX, SHARD, sid, uid, ARGV[7], ARGV[8], ARGV[9])
local gen, ep = bump()
return {1, gen, ep}
