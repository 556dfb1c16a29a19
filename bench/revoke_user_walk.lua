-- The O(sessions) walk that tokend's revoke_user.lua replaced (tokend before its per-user
-- revocation mark): the baseline of bench/user_revocation.py, never used by tokend.
-- Revoke every session of a user (logout-all, admin revoke), or every other one
-- (password change), on the partitioned layout (service/keyspace.py).
-- KEYS: user index, user deny key, the partition's expiry index, events stream (its
--       pub/sub channel has the same name), gen, epoch
-- ARGV: base uid reason now deny_until retention keep_sid
--       base: the partition's key base "<prefix>:{<tag>}:" (Partition.key(""))
-- Returns {n, gen, epoch}: how many sessions ended, and the position after the write.
-- Session keys are derived from the index here; on Redis Cluster this only works because
-- they share the user's partition's hash slot.
-- tokend's helpers as they were then (tokend's scripts now take every key via KEYS)
local function encode(ev)
  local json = cjson.encode(ev)
  if type(ev['at']) == 'string' then
    json = string.gsub(json, '"at":"(%d+%.%d+)"', '"at":%1', 1)
  end
  return json
end

local INDEX, MARK, EXPIRY, STREAM, GEN, EPOCH = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function emit(retention, ev)
  ev['v'] = 1
  local t = redis.call('TIME')
  local minid = (tonumber(t[1]) - tonumber(retention)) * 1000
  local id = redis.call('XADD', STREAM, 'MINID', tostring(minid), '*', 'event', encode(ev))
  ev['id'] = id
  redis.call('PUBLISH', STREAM, encode(ev))
  return id
end

local function revoke_session(base, sid, uid, reason, now, untl, retention, detail)
  redis.call('DEL', base .. 's:' .. sid)
  redis.call('SET', base .. 'ds:' .. sid, '1', 'EXAT', math.ceil(tonumber(untl)))
  redis.call('ZREM', INDEX, sid)
  redis.call('ZREM', EXPIRY, sid .. ':' .. uid)
  return emit(retention, {
    type = 'session.revoked', sub = uid, sid = sid, jti = cjson.null, reason = reason,
    at = tonumber(now), ['until'] = tonumber(untl), detail = detail,
  })
end

local function bump()
  local gen = redis.call('INCR', GEN)
  return gen, tonumber(redis.call('GET', EPOCH) or '0')
end

local base, uid, reason = ARGV[1], ARGV[2], ARGV[3]
local now, untl, retention, keep = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local sids = redis.call('ZRANGE', INDEX, 0, -1)
local n = 0
if keep == '' then
  for _, sid in ipairs(sids) do
    redis.call('DEL', base .. 's:' .. sid)
    redis.call('SET', base .. 'ds:' .. sid, '1', 'EXAT', math.ceil(tonumber(untl)))
    redis.call('ZREM', EXPIRY, sid .. ':' .. uid)
    n = n + 1
  end
  redis.call('DEL', INDEX)
  -- keep the later revocation time: API processes' clocks may differ slightly
  local before = tonumber(redis.call('GET', MARK) or '0')
  if tonumber(now) > before then
    redis.call('SET', MARK, now, 'EXAT', math.ceil(tonumber(untl)))
  end
  emit(retention, {
    type = 'user.revoked', sub = uid, sid = cjson.null, jti = cjson.null, reason = reason,
    at = tonumber(now), ['until'] = tonumber(untl),
  })
  local gen, ep = bump()
  return {n, gen, ep}
end
for _, sid in ipairs(sids) do
  if sid ~= keep then
    revoke_session(base, sid, uid, reason, now, untl, retention)
    n = n + 1
  end
end
local gen, ep = bump()
return {n, gen, ep}
