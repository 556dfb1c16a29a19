-- Shared helpers, prepended to every tokend script.
-- Events go to the stream and the channel in the same script, so they are atomic with
-- the state change that caused them. The stream is trimmed exactly by age (MINID without
-- "~"): it only holds revocations, so the cost is small and the bound is precise.
-- cjson writes numbers with 14 significant digits, which cuts a time to 0.1 ms; a time
-- given as a string of digits (fmt_time) is written as the exact number instead.
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

-- The expiry index is sharded so no single sorted set is hot; members are "sid:uid".
-- Keep EXPIRY_SHARDS in service/sessions.py in step.
local EXPIRY_SHARDS = 16
local function expiry_key(prefix, sid)
  local sum = 0
  for i = 1, #sid do sum = sum + string.byte(sid, i) end
  return prefix .. ':exp:' .. (sum % EXPIRY_SHARDS)
end

local function expire_at(key, deadline)
  redis.call('EXPIREAT', key, math.ceil(tonumber(deadline)))
end

-- Revoke one session: drop its state, deny its access tokens until `untl`, publish.
-- `detail` (optional) says more about the reason (refresh_token_reuse: concurrent|replay).
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

-- The position of the data (see service/fence.py): the epoch (a new one per fence) and
-- the write generation (raised by every rotation and revocation).
local function position(prefix)
  return tonumber(redis.call('GET', prefix .. ':epoch') or '0'),
    tonumber(redis.call('GET', prefix .. ':gen') or '0')
end

-- Whether data at (ep, gen) is behind a position the caller has already seen: Redis
-- lost data or was restored from an older snapshot. An empty known epoch: not checked.
local function is_behind(ep, gen, known_epoch, known_gen)
  if known_epoch == nil or known_epoch == '' then return false end
  local ke, kg = tonumber(known_epoch), tonumber(known_gen)
  return ep < ke or (ep == ke and gen < kg)
end

-- Count one write that must not be lost silently; the new position.
local function bump(prefix)
  local gen = redis.call('INCR', prefix .. ':gen')
  return gen, tonumber(redis.call('GET', prefix .. ':epoch') or '0')
end

-- Redis's own clock in seconds, to the microsecond. Times that are compared with one
-- another (a user's revocation mark, a session's authentication time) all come from
-- here: one clock, whichever API process asked, and fine enough that a login checked
-- after a revocation is never taken for one checked at the same moment.
local function clock_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function fmt_time(t)
  return string.format('%.6f', t)
end

-- A user's revocation mark (P:du:<uid>): "<at>" or "<at> <kept sid>". Every session
-- authenticated at or before `at` is revoked, except the kept one (the session that
-- changed the password). Returns at (number or nil) and the kept sid ('' when none).
local function user_mark(key)
  local v = redis.call('GET', key)
  if not v then return nil, '' end
  local at, keep = string.match(v, '^(%S+) ?(%S*)$')
  return tonumber(at), keep or ''
end

-- Whether a session (its sid and authentication time) falls under a user's mark.
local function revoked_by_mark(mark_at, keep, sid, auth)
  return mark_at ~= nil and sid ~= keep and tonumber(auth) <= mark_at
end
