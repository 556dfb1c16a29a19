-- Create a session at login.
-- KEYS: session hash, user index, user revocation mark
-- ARGV: sid uid cid scope now idle_exp abs_exp jti ua ip prefix known_epoch known_gen
--       auth max_sessions deny_until retention
-- The refresh token `jti` is issued at `now` (its iat: the whole second) and expires at
-- idle_exp. `auth` is when the credentials were checked, on Redis's clock (taken before
-- the user row was read): a revocation of the user at or after it (logout-all, password
-- change, disable, delete) means the credentials may be the ones it ended.
-- Returns {'ok', gen, epoch, evicted sid...}; {'revoked'} when the user was revoked at or
-- after `auth` (nothing is written); {'stale'} when this Redis is behind the caller's
-- known position. The session records the epoch it was created in: a fence ends it
-- (rotate.lua). Past max_sessions (0: no cap) the least recently used sessions end
-- (session.revoked, reason session_limit).
local sid, uid, prefix = ARGV[1], ARGV[2], ARGV[11]
local ep, gen = position(prefix)
if is_behind(ep, gen, ARGV[12], ARGV[13]) then return {'stale'} end
local mark_at = user_mark(KEYS[3])
if mark_at ~= nil and tonumber(ARGV[14]) <= mark_at then return {'revoked'} end
local max = tonumber(ARGV[15])
local reply = {'ok'}
if max > 0 and redis.call('ZCARD', KEYS[2]) >= max then
  -- drop index entries past their absolute deadline, then sessions whose hash is gone
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
  local live = {}
  for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local last = redis.call('HGET', prefix .. ':s:{' .. s .. '}', 'last')
    if last then
      live[#live + 1] = {s, tonumber(last)}
    else
      redis.call('ZREM', KEYS[2], s)
    end
  end
  if #live >= max then
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for i = 1, #live - max + 1 do
      revoke_session(prefix, live[i][1], uid, 'session_limit', ARGV[5], ARGV[16], ARGV[17])
      reply[#reply + 1] = live[i][1]
    end
  end
end
redis.call('HSET', KEYS[1],
  'uid', uid, 'cid', ARGV[3], 'scope', ARGV[4], 'created', ARGV[5], 'last', ARGV[5],
  'idle', ARGV[6], 'abs', ARGV[7], 'cur', ARGV[8], 'ua', ARGV[9], 'ip', ARGV[10],
  'ep', math.max(ep, 1), 'auth', ARGV[14])
expire_at(KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], sid)
local top = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
expire_at(KEYS[2], top[2])
redis.call('ZADD', expiry_key(prefix, sid), ARGV[6], sid .. ':' .. uid)
if #reply > 1 then gen, ep = bump(prefix) end
table.insert(reply, 2, gen)
table.insert(reply, 3, ep)
return reply
