-- Create a session at login.
-- KEYS: session hash, user index
-- ARGV: sid uid cid scope now idle_exp abs_exp jti iat ua ip prefix known_epoch known_gen
-- Returns {'ok'}, or {'stale'} when this Redis is behind the caller's known position.
-- The session records the epoch it was created in: a fence ends it (rotate.lua).
local sid, uid = ARGV[1], ARGV[2]
local ep, gen = position(ARGV[12])
if is_behind(ep, gen, ARGV[13], ARGV[14]) then return {'stale'} end
redis.call('HSET', KEYS[1],
  'uid', uid, 'cid', ARGV[3], 'scope', ARGV[4], 'created', ARGV[5], 'last', ARGV[5],
  'idle', ARGV[6], 'abs', ARGV[7], 'cur', ARGV[8], 'cur_iat', ARGV[9], 'cur_exp', ARGV[6],
  'ua', ARGV[10], 'ip', ARGV[11], 'ep', math.max(ep, 1))
expire_at(KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], sid)
local top = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
expire_at(KEYS[2], top[2])
redis.call('ZADD', expiry_key(ARGV[12], sid), ARGV[6], sid .. ':' .. uid)
return {'ok'}
