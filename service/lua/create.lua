-- Create a session at login.
-- KEYS: (common head: epoch gen events fence) session hash, user index, user
--       revocation mark, the session's expiry shard, then for each candidate (the user's
--       sessions as the caller read the index after a 'full' reply): its session hash,
--       its deny key, its expiry shard
-- ARGV: (known_epoch known_gen retention) sid uid cid scope now idle_exp abs_exp jti ua ip
--       auth max_sessions deny_until jkt, then the candidates' sids
-- The refresh token `jti` is issued at `now` (its iat: the whole second) and expires at
-- idle_exp. `auth` is when the credentials were checked, on Redis's clock (taken before
-- the user row was read): a revocation of the user at or after it (logout-all, password
-- change, disable, delete) means the credentials may be the ones it ended. `jkt` is the
-- DPoP key thumbprint the login proved ('' for none; kept only when set).
-- Replies (decoded by service/replies.py `created`):
--   {'ok', gen, epoch, fence, evicted sid...}   fence: the partition's last fence time
--                ('' when none): an access token issued now must carry a later iat
--   {'full'}     the user holds max_sessions (0: no cap) live sessions and too few of
--                them are among the candidates: no session is written or ended; the
--                caller reads the index and calls again with it as the candidates
--   {'revoked'}  the user was revoked at or after `auth`: nothing is written
--   {'stale'}    this Redis is behind the caller's known position
-- The session records the epoch it was created in: a fence ends it (rotate.lua). Past
-- max_sessions the least recently used candidates end (session.revoked, reason
-- session_limit); index entries whose hash is gone are dropped without an event.
local SESSION, INDEX, MARK, SHARD = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local sid, uid, now = ARGV[4], ARGV[5], ARGV[8]
local ep, gen = position()
if is_behind(ep, gen) then return {'stale'} end
local mark_at = user_mark(MARK)
if mark_at ~= nil and tonumber(ARGV[14]) <= mark_at then return {'revoked'} end
local max = tonumber(ARGV[15])
local reply = {'ok'}
if max > 0 and redis.call('ZCARD', INDEX) >= max then
  -- drop index entries past their absolute deadline and candidates whose hash is gone
  redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', now)
  local live = {}
  for i = 18, #ARGV do
    if redis.call('ZSCORE', INDEX, ARGV[i]) then
      local last = redis.call('HGET', KEYS[8 + (i - 18) * 3 + 1], 'last')
      if last then
        live[#live + 1] = {i, tonumber(last)}
      else
        redis.call('ZREM', INDEX, ARGV[i])
      end
    end
  end
  local need = redis.call('ZCARD', INDEX) - max + 1
  if need > #live then return {'full'} end
  if need > 0 then
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for j = 1, need do
      local i = live[j][1]
      local base = 8 + (i - 18) * 3
      local vsession, vdeny, vshard = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
      revoke_session(vsession, vdeny, INDEX, vshard, ARGV[i], uid, 'session_limit', now,
        ARGV[16])
      reply[#reply + 1] = ARGV[i]
    end
  end
end
redis.call('HSET', SESSION,
  'uid', uid, 'cid', ARGV[6], 'scope', ARGV[7], 'created', now, 'last', now,
  'idle', ARGV[9], 'abs', ARGV[10], 'cur', ARGV[11], 'ua', ARGV[12], 'ip', ARGV[13],
  'ep', math.max(ep, 1), 'auth', ARGV[14], 'n', 1)
if ARGV[17] ~= '' then redis.call('HSET', SESSION, 'jkt', ARGV[17]) end
expire_at(SESSION, ARGV[9])
redis.call('ZADD', INDEX, ARGV[10], sid)
local top = redis.call('ZRANGE', INDEX, 0, 0, 'REV', 'WITHSCORES')
expire_at(INDEX, top[2])
redis.call('ZADD', SHARD, ARGV[9], sid .. ':' .. uid)
if #reply > 1 then gen, ep = bump() end
table.insert(reply, 2, gen)
table.insert(reply, 3, ep)
table.insert(reply, 4, redis.call('GET', FENCE_KEY) or '')
return reply
