-- Revoke one session (logout, session delete, RFC 7009 revoke of a refresh token).
-- KEYS: session hash
-- ARGV: prefix sid owner reason now deny_until retention force
-- owner: the uid that must own the session ('' = any). force=1 denies the sid even when
-- its state is already gone (the caller proved it with a verified token).
-- Returns {1, gen, epoch} when revoked, {0} when there was nothing of the owner's.
local prefix, sid, owner = ARGV[1], ARGV[2], ARGV[3]
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
