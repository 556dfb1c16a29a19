-- Revoke one session (logout, session delete, RFC 7009 revoke of a refresh token).
-- KEYS: session hash
-- ARGV: prefix sid owner reason now deny_until retention force known_epoch known_gen
-- owner: the uid that must own the session ('' = any). force=1 denies the sid even when
-- its state is already gone (the caller proved it with a verified token).
-- Returns {1, gen, epoch} when revoked, {0} when there was nothing of the owner's,
-- {'stale'} when this Redis is behind the known position (a write here would raise gen
-- past it and hide the rollback from the fence).
local prefix, sid, owner = ARGV[1], ARGV[2], ARGV[3]
local ep, gen = position(prefix)
if is_behind(ep, gen, ARGV[9], ARGV[10]) then return {'stale'} end
local uid = redis.call('HGET', KEYS[1], 'uid')
if not uid then
  if ARGV[8] ~= '1' or owner == '' then return {0} end
  uid = owner
elseif owner ~= '' and uid ~= owner then
  return {0}
end
revoke_session(prefix, sid, uid, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
local gen, ep = bump(prefix)
return {1, gen, ep}
