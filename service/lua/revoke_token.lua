-- Deny one access token by jti until it expires (RFC 7009 revoke of an access token).
-- KEYS: (common head: epoch gen events fence) the jti's deny key
-- ARGV: (known_epoch known_gen retention) jti sub sid reason now deny_until
-- Returns {1, gen, epoch} on the first revocation, {0} after, {'stale'} when this Redis
-- is behind the known position.
local ep, gen = position()
if is_behind(ep, gen) then return {'stale'} end
if redis.call('SET', KEYS[5], '1', 'NX', 'EXAT', math.ceil(tonumber(ARGV[9]))) then
  emit({
    type = 'token.revoked', sub = ARGV[5], sid = ARGV[6], jti = ARGV[4], reason = ARGV[7],
    at = tonumber(ARGV[8]), ['until'] = tonumber(ARGV[9]),
  })
  local gen, ep = bump()
  return {1, gen, ep}
end
return {0}
