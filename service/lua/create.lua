-- Create a session at login.
-- KEYS: session hash, user index
-- ARGV: sid uid cid scope now idle_exp abs_exp jti ua ip prefix known_epoch known_gen
-- The refresh token `jti` is issued at `now` (its iat: the whole second) and expires at idle_exp.
-- Returns {'ok'}, or {'stale'} when this Redis is behind the caller's known position.
-- The session records the epoch it was created in: a fence ends it (rotate.lua).
local sid, uid = ARGV[1], ARGV[2]
local ep, gen = position(ARGV[11])
if is_behind(ep, gen, ARGV[12], ARGV[13]) then return {'stale'} end
redis.call('HSET', KEYS[1],
  'uid', uid, 'cid', ARGV[3], 'scope', ARGV[4], 'created', ARGV[5], 'last', ARGV[5],
  'idle', ARGV[6], 'abs', ARGV[7], 'cur', ARGV[8], 'ua', ARGV[9], 'ip', ARGV[10],
  'ep', math.max(ep, 1))
expire_at(KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], sid)
local top = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
expire_at(KEYS[2], top[2])
redis.call('ZADD', expiry_key(ARGV[11], sid), ARGV[6], sid .. ':' .. uid)
return {'ok'}
