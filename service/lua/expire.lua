-- End a batch of due sessions of one expiry shard, atomically: a worker killed mid-batch
-- either did the whole batch or none of it, and each session.expired is published
-- exactly once (a member another sweep handled meanwhile is no longer due and skipped).
-- The caller read the due members (ZRANGEBYSCORE ... LIMIT) and passes their keys.
-- KEYS: (common head: epoch gen events fence) the expiry shard, then for each member:
--       its session hash, its user's index, its user's revocation mark
-- ARGV: (known_epoch known_gen retention) now, then the members "sid:uid"
-- Returns the number of sessions that ended with a session.expired.
local SHARD, now = KEYS[5], tonumber(ARGV[4])
local n = 0
for i = 5, #ARGV do
  local member = ARGV[i]
  local base = 5 + (i - 5) * 3
  local session, index, mark = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local score = redis.call('ZSCORE', SHARD, member)
  if score and tonumber(score) <= now then
    local sid, uid = string.match(member, '^([^:]+):(.+)$')
    local f = redis.call('HMGET', session, 'idle', 'abs', 'auth', 'created')
    local mark_at, keep = user_mark(mark)
    if f[1] and revoked_by_mark(mark_at, keep, sid, f[3] or f[4]) then
      -- already ended by its user's revocation (user.revoked): drop it without an event
      redis.call('DEL', session)
      redis.call('ZREM', SHARD, member)
    elseif f[1] and tonumber(f[1]) > now and tonumber(f[2]) > now then
      -- refreshed since it was indexed: put it back at its real deadline
      redis.call('ZADD', SHARD, math.min(tonumber(f[1]), tonumber(f[2])), member)
    else
      local reason = 'idle_timeout'
      if f[2] and tonumber(f[2]) <= now then reason = 'absolute_timeout' end
      redis.call('DEL', session)
      redis.call('ZREM', SHARD, member)
      redis.call('ZREM', index, sid)
      emit({
        type = 'session.expired', sub = uid, sid = sid, jti = cjson.null, reason = reason,
        at = now, ['until'] = now,
      })
      n = n + 1
    end
  end
end
return n
