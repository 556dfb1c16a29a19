-- Rotate a session's refresh token in one step.
-- KEYS: session hash, revocation mark of the user the refresh token names
-- ARGV: prefix sid presented_jti now new_jti idle_ttl grace deny_until retention ua ip
--       known_epoch known_gen uid
-- Replies (decoded by service/sessions.py `_rotation`):
--   {'rotated' | 'grace', uid, jti, iat, exp, cid, scope, gen, epoch, auth}
--   {'reuse', uid, gen, epoch, kind, ip, ua}   kind: concurrent (the presented token was
--        superseded less than the grace ago: most likely the client's own race) or
--        replay; ip and ua of the session's last use
--   {'expired' | 'unknown' | 'fenced' | 'revoked' | 'mismatch', uid} and {'stale'}
-- stale: this Redis is behind the caller's known position (fence.py) and nothing was
-- read or changed; fenced: the session predates a fence and has just been ended;
-- revoked: the session was authenticated before its user's revocation mark and has just
-- been ended; mismatch: the session belongs to another user than the token says.
local prefix, sid, jti = ARGV[1], ARGV[2], ARGV[3]
local ep, gen = position(prefix)
if is_behind(ep, gen, ARGV[12], ARGV[13]) then return {'stale'} end
local now = tonumber(ARGV[4])
-- The current refresh token was issued at `last` (iat: its whole second) and expires at
-- `idle`; the previous one is honoured until `last` + grace. `plast` is when the previous
-- one was issued: every older token was superseded by then.
local f = redis.call('HMGET', KEYS[1], 'uid', 'cur', 'prev', 'last', 'abs', 'idle', 'cid',
  'scope', 'ep', 'auth', 'created', 'ip', 'ua', 'plast')
local uid = f[1]
if not uid then return {'unknown'} end
if uid ~= ARGV[14] then return {'mismatch', uid} end
local auth = f[10] or f[11]
local function drop()
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', prefix .. ':u:' .. uid, sid)
  redis.call('ZREM', expiry_key(prefix, sid), sid .. ':' .. uid)
end
if tonumber(f[9] or '1') < ep then
  -- created before the last fence: its state may be a restored, outdated copy
  drop()
  return {'fenced', uid}
end
local mark_at, keep = user_mark(KEYS[2])
if revoked_by_mark(mark_at, keep, sid, auth) then
  drop()
  return {'revoked', uid}
end
if now >= tonumber(f[6]) or now >= tonumber(f[5]) then return {'expired', uid} end
if jti == f[2] then
  local iat = math.floor(now)
  local exp = math.min(iat + tonumber(ARGV[6]), math.floor(tonumber(f[5])))
  redis.call('HSET', KEYS[1], 'cur', ARGV[5], 'prev', jti, 'idle', exp, 'last', ARGV[4],
    'plast', f[4], 'ua', ARGV[10], 'ip', ARGV[11])
  expire_at(KEYS[1], exp)
  redis.call('ZADD', expiry_key(prefix, sid), exp, sid .. ':' .. uid)
  gen = redis.call('INCR', prefix .. ':gen')
  return {'rotated', uid, ARGV[5], iat, exp, f[7], f[8], gen, ep, auth}
end
local grace = tonumber(ARGV[7])
if jti == f[3] and now < tonumber(f[4]) + grace then
  return {'grace', uid, f[2], math.floor(tonumber(f[4])), tonumber(f[6]), f[7], f[8], gen, ep,
    auth}
end
-- The previous token past the grace is a replay; an older one was superseded by `plast`.
local kind = 'replay'
if jti ~= f[3] and f[14] and now < tonumber(f[14]) + grace then kind = 'concurrent' end
revoke_session(prefix, sid, uid, 'refresh_token_reuse', now, ARGV[8], ARGV[9], kind)
gen = redis.call('INCR', prefix .. ':gen')
return {'reuse', uid, gen, ep, kind, f[12] or '', f[13] or ''}
