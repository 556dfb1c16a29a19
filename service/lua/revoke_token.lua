-- Deny one access token by jti until it expires (RFC 7009 revoke of an access token).
-- KEYS: jti deny key
-- ARGV: prefix jti sub sid reason now deny_until retention known_epoch known_gen
-- Returns {1, gen, epoch} on the first revocation, {0} after, {'stale'} when this Redis
-- is behind the known position.
local ep, gen = position(ARGV[1])
if is_behind(ep, gen, ARGV[9], ARGV[10]) then return {'stale'} end
if redis.call('SET', KEYS[1], '1', 'NX', 'EXAT', math.ceil(tonumber(ARGV[7]))) then
  emit(ARGV[1] .. ':events', ARGV[1] .. ':revocations', ARGV[8], {
    type = 'token.revoked', sub = ARGV[3], sid = ARGV[4], jti = ARGV[2], reason = ARGV[5],
    at = tonumber(ARGV[6]), ['until'] = tonumber(ARGV[7]),
  })
  local gen, ep = bump(ARGV[1])
  return {1, gen, ep}
end
return {0}
