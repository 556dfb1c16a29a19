-- The O(sessions) walk that tokend's revoke_user.lua replaced (tokend before its per-user
-- revocation mark): the baseline of bench/user_revocation.py, never used by tokend.
-- Revoke every session of a user (logout-all, admin revoke), or every other one
-- (password change).
-- KEYS: user index, user deny key
-- ARGV: prefix uid reason now deny_until retention keep_sid
-- Returns {n, gen, epoch}: how many sessions ended, and the position after the write.
-- Session keys are derived from the index here; on Redis Cluster this script would
-- have to run per slot.
-- tokend's helpers as they were then (tokend's scripts now take every key via KEYS)
local function encode(ev)
  local json = cjson.encode(ev)
  if type(ev['at']) == 'string' then
    json = string.gsub(json, '"at":"(%d+%.%d+)"', '"at":%1', 1)
  end
  return json
end

local function emit(stream, channel, retention, ev)
  ev['v'] = 1
  local t = redis.call('TIME')
  local minid = (tonumber(t[1]) - tonumber(retention)) * 1000
  local id = redis.call('XADD', stream, 'MINID', tostring(minid), '*', 'event', encode(ev))
  ev['id'] = id
  redis.call('PUBLISH', channel, encode(ev))
  return id
end

local EXPIRY_SHARDS = 16
local function expiry_key(prefix, sid)
  local sum = 0
  for i = 1, #sid do sum = sum + string.byte(sid, i) end
  return prefix .. ':exp:' .. (sum % EXPIRY_SHARDS)
end

local function revoke_session(prefix, sid, uid, reason, now, untl, retention, detail)
  local tag = '{' .. sid .. '}'
  redis.call('DEL', prefix .. ':s:' .. tag)
  redis.call('SET', prefix .. ':ds:' .. tag, '1', 'EXAT', math.ceil(tonumber(untl)))
  redis.call('ZREM', prefix .. ':u:' .. uid, sid)
  redis.call('ZREM', expiry_key(prefix, sid), sid .. ':' .. uid)
  return emit(prefix .. ':events', prefix .. ':revocations', retention, {
    type = 'session.revoked', sub = uid, sid = sid, jti = cjson.null, reason = reason,
    at = tonumber(now), ['until'] = tonumber(untl), detail = detail,
  })
end

local function bump(prefix)
  local gen = redis.call('INCR', prefix .. ':gen')
  return gen, tonumber(redis.call('GET', prefix .. ':epoch') or '0')
end

local prefix, uid, reason = ARGV[1], ARGV[2], ARGV[3]
local now, untl, retention, keep = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = 0
if keep == '' then
  for _, sid in ipairs(sids) do
    local tag = '{' .. sid .. '}'
    redis.call('DEL', prefix .. ':s:' .. tag)
    redis.call('SET', prefix .. ':ds:' .. tag, '1', 'EXAT', math.ceil(tonumber(untl)))
    redis.call('ZREM', expiry_key(prefix, sid), sid .. ':' .. uid)
    n = n + 1
  end
  redis.call('DEL', KEYS[1])
  -- keep the later revocation time: API processes' clocks may differ slightly
  local before = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(now) > before then
    redis.call('SET', KEYS[2], now, 'EXAT', math.ceil(tonumber(untl)))
  end
  emit(prefix .. ':events', prefix .. ':revocations', retention, {
    type = 'user.revoked', sub = uid, sid = cjson.null, jti = cjson.null, reason = reason,
    at = tonumber(now), ['until'] = tonumber(untl),
  })
  local gen, ep = bump(prefix)
  return {n, gen, ep}
end
for _, sid in ipairs(sids) do
  if sid ~= keep then
    revoke_session(prefix, sid, uid, reason, now, untl, retention)
    n = n + 1
  end
end
local gen, ep = bump(prefix)
return {n, gen, ep}
