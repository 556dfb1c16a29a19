-- Sweep one batch of due sessions from one expiry shard, atomically: a worker killed
-- mid-batch either did the whole batch or none of it, and each session.expired is
-- published exactly once.
-- KEYS: expiry shard
-- ARGV: prefix now batch retention
local prefix, now = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, member in ipairs(due) do
  local sid, uid = string.match(member, '^([^:]+):(.+)$')
  local skey = prefix .. ':s:{' .. sid .. '}'
  local f = redis.call('HMGET', skey, 'idle', 'abs', 'auth', 'created')
  local mark_at, keep = user_mark(prefix .. ':du:' .. uid)
  if f[1] and revoked_by_mark(mark_at, keep, sid, f[3] or f[4]) then
    -- already ended by its user's revocation (user.revoked): drop it without an event
    redis.call('DEL', skey)
    redis.call('ZREM', KEYS[1], member)
  elseif f[1] and tonumber(f[1]) > now and tonumber(f[2]) > now then
    -- refreshed since it was indexed: put it back at its real deadline
    redis.call('ZADD', KEYS[1], math.min(tonumber(f[1]), tonumber(f[2])), member)
  else
    local reason = 'idle_timeout'
    if f[2] and tonumber(f[2]) <= now then reason = 'absolute_timeout' end
    redis.call('DEL', skey)
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', prefix .. ':u:' .. uid, sid)
    emit(prefix .. ':events', prefix .. ':revocations', ARGV[4], {
      type = 'session.expired', sub = uid, sid = sid, jti = cjson.null, reason = reason,
      at = now, ['until'] = now,
    })
    n = n + 1
  end
end
return n
