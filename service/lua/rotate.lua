-- Rotate a session's refresh token in one step.
-- KEYS: session hash
-- ARGV: prefix sid presented_jti now new_jti idle_ttl grace deny_until retention ua ip
-- Returns {status, uid, jti, iat, exp, cid, scope}; status is rotated | grace | reuse |
-- expired | unknown.
local prefix, sid, jti = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'uid', 'cur', 'prev', 'prev_until', 'abs', 'idle',
  'cur_iat', 'cur_exp', 'cid', 'scope')
local uid = f[1]
if not uid then return {'unknown'} end
if now >= tonumber(f[6]) or now >= tonumber(f[5]) then return {'expired', uid} end
if jti == f[2] then
  local iat = math.floor(now)
  local exp = math.min(iat + tonumber(ARGV[6]), math.floor(tonumber(f[5])))
  redis.call('HSET', KEYS[1], 'cur', ARGV[5], 'cur_iat', iat, 'cur_exp', exp, 'prev', jti,
    'prev_until', now + tonumber(ARGV[7]), 'idle', exp, 'last', ARGV[4], 'ua', ARGV[10],
    'ip', ARGV[11])
  expire_at(KEYS[1], exp)
  redis.call('ZADD', expiry_key(prefix, sid), exp, sid .. ':' .. uid)
  return {'rotated', uid, ARGV[5], iat, exp, f[9], f[10]}
end
if jti == f[3] and now < tonumber(f[4]) then
  return {'grace', uid, f[2], tonumber(f[7]), tonumber(f[8]), f[9], f[10]}
end
revoke_session(prefix, sid, uid, 'refresh_token_reuse', now, ARGV[8], ARGV[9])
return {'reuse', uid}
