-- Rotate a session's refresh token in one step.
-- KEYS: session hash
-- ARGV: prefix sid presented_jti now new_jti idle_ttl grace deny_until retention ua ip
--       known_epoch known_gen
-- Returns {status, uid, jti, iat, exp, cid, scope, gen, epoch}; status is rotated |
-- grace | reuse | expired | unknown | fenced | stale. stale: this Redis is behind the
-- caller's known position (fence.py) and nothing was read or changed; fenced: the
-- session predates a fence and has just been ended.
local prefix, sid, jti = ARGV[1], ARGV[2], ARGV[3]
local ep, gen = position(prefix)
if is_behind(ep, gen, ARGV[12], ARGV[13]) then return {'stale'} end
local now = tonumber(ARGV[4])
-- The current refresh token was issued at `last` (iat: its whole second) and expires at
-- `idle`; the previous one is honoured until `last` + grace.
local f = redis.call('HMGET', KEYS[1], 'uid', 'cur', 'prev', 'last', 'abs', 'idle', 'cid',
  'scope', 'ep')
local uid = f[1]
if not uid then return {'unknown'} end
if tonumber(f[9] or '1') < ep then
  -- created before the last fence: its state may be a restored, outdated copy
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', prefix .. ':u:' .. uid, sid)
  redis.call('ZREM', expiry_key(prefix, sid), sid .. ':' .. uid)
  return {'fenced', uid}
end
if now >= tonumber(f[6]) or now >= tonumber(f[5]) then return {'expired', uid} end
if jti == f[2] then
  local iat = math.floor(now)
  local exp = math.min(iat + tonumber(ARGV[6]), math.floor(tonumber(f[5])))
  redis.call('HSET', KEYS[1], 'cur', ARGV[5], 'prev', jti, 'idle', exp, 'last', ARGV[4],
    'ua', ARGV[10], 'ip', ARGV[11])
  expire_at(KEYS[1], exp)
  redis.call('ZADD', expiry_key(prefix, sid), exp, sid .. ':' .. uid)
  gen = redis.call('INCR', prefix .. ':gen')
  return {'rotated', uid, ARGV[5], iat, exp, f[7], f[8], gen, ep}
end
if jti == f[3] and now < tonumber(f[4]) + tonumber(ARGV[7]) then
  return {'grace', uid, f[2], math.floor(tonumber(f[4])), tonumber(f[6]), f[7], f[8], gen, ep}
end
revoke_session(prefix, sid, uid, 'refresh_token_reuse', now, ARGV[8], ARGV[9])
gen = redis.call('INCR', prefix .. ':gen')
return {'reuse', uid, gen, ep}
