-- Shared helpers, prepended to every tokend script.
-- Every script receives every key it touches through KEYS (Redis Cluster's rule; a test
-- checks it), in a regular layout built by service/keyspace.py:
--   KEYS[1] epoch  KEYS[2] gen  KEYS[3] events stream  KEYS[4] fence, all of the partition
--   the script's keys belong to (one hash slot)  KEYS[5..] the script's
--   ARGV[1] known_epoch  ARGV[2] known_gen ('' '': not checked)  ARGV[3] stream retention
--   ARGV[4..] the script's
-- Events go to the partition's stream, and a wake-up to the pub/sub channel of the same
-- name, in the same script, so they are atomic with the state change that caused them. The stream is trimmed exactly by age (MINID without
-- "~"): it only holds revocations, so the cost is small and the bound is precise.
-- cjson writes numbers with 14 significant digits, which cuts a time to 0.1 ms; a time
-- given as a string of digits (fmt_time) is written as the exact number instead.
local EPOCH_KEY, GEN_KEY, EVENTS_KEY, FENCE_KEY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local KNOWN_EPOCH, KNOWN_GEN, RETENTION = ARGV[1], ARGV[2], ARGV[3]

local function encode(ev)
  local json = cjson.encode(ev)
  if type(ev['at']) == 'string' then
    json = string.gsub(json, '"at":"(%d+%.%d+)"', '"at":%1', 1)
  end
  return json
end

-- The fields of each event type are listed in service/events.py.
local function emit(ev)
  ev['v'] = 1
  local t = redis.call('TIME')
  local minid = (tonumber(t[1]) - tonumber(RETENTION)) * 1000
  local id = redis.call('XADD', EVENTS_KEY, 'MINID', tostring(minid), '*', 'event', encode(ev))
  ev['id'] = id
  redis.call('PUBLISH', EVENTS_KEY, encode(ev))
  return id
end

local function expire_at(key, deadline)
  redis.call('EXPIREAT', key, math.ceil(tonumber(deadline)))
end

-- Revoke one session: drop its state, deny its access tokens until `untl`, publish.
-- The keys are the session's hash, its deny key, its user's index and its expiry shard.
-- `detail` (optional) says more about the reason (refresh_token_reuse: concurrent|replay).
-- `cid`: the OAuth client the session was issued to (the hash's, read before it goes;
-- absent for a session without one), for back-channel logout (workers/backchannel.py).
local function revoke_session(session, deny, index, shard, sid, uid, reason, now, untl, detail)
  local cid = redis.call('HGET', session, 'cid')
  if not cid or cid == '' then cid = nil end
  redis.call('DEL', session)
  redis.call('SET', deny, '1', 'EXAT', math.ceil(tonumber(untl)))
  redis.call('ZREM', index, sid)
  redis.call('ZREM', shard, sid .. ':' .. uid)
  return emit({
    type = 'session.revoked', sub = uid, sid = sid, jti = cjson.null, reason = reason,
    at = tonumber(now), ['until'] = tonumber(untl), detail = detail, cid = cid,
  })
end

-- The position of the data (see service/fence.py): the epoch (a new one per fence) and
-- the write generation (raised by every rotation and revocation).
local function position()
  return tonumber(redis.call('GET', EPOCH_KEY) or '0'),
    tonumber(redis.call('GET', GEN_KEY) or '0')
end

-- Whether data at (ep, gen) is behind the position the caller has already seen
-- (ARGV[1..2]): Redis lost data or was restored from an older snapshot. An empty known
-- epoch: not checked.
local function is_behind(ep, gen)
  if KNOWN_EPOCH == nil or KNOWN_EPOCH == '' then return false end
  local ke, kg = tonumber(KNOWN_EPOCH), tonumber(KNOWN_GEN)
  return ep < ke or (ep == ke and gen < kg)
end

-- Count one write that must not be lost silently; the new position.
local function bump()
  local gen = redis.call('INCR', GEN_KEY)
  return gen, tonumber(redis.call('GET', EPOCH_KEY) or '0')
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

-- The fields of a session hash that the refresh-token rule reads, in this order. `n` is
-- the rotation number of the current refresh token (1 for the login's; each rotation
-- adds one), carried in the token as its `rot` claim.
local function read_session(key)
  return redis.call('HMGET', key, 'uid', 'cur', 'prev', 'last', 'abs', 'idle', 'cid',
    'scope', 'ep', 'auth', 'created', 'ip', 'ua', 'plast', 'n')
end

-- The refresh-token rule, one place for rotate.lua (which acts on the verdict) and
-- peek.lua (read-only): `f` is read_session's reply, `ep` the current epoch, `mark_key`
-- the revocation mark of the session's user. The verdict: unknown (no session), fenced
-- (created before the last fence: its state may be a restored, outdated copy), revoked
-- (authenticated at or before its user's mark), expired, current (`jti` is the current
-- refresh token), grace (the previous one, issued less than `grace` ago), ahead or
-- reuse. ahead: a token of a later rotation than the session records (`rot` above `n`).
-- Only tokend can have issued it (the token is MACed and names this session), so the
-- rotation that issued it was acknowledged and then lost (a replica promoted before it
-- got the write): the token is the newest, and the session rolls forward to it.
local function judge(f, sid, jti, now, ep, mark_key, grace, rot)
  if not f[1] then return 'unknown' end
  if tonumber(f[9] or '1') < ep then return 'fenced' end
  local mark_at, keep = user_mark(mark_key)
  if revoked_by_mark(mark_at, keep, sid, f[10] or f[11]) then return 'revoked' end
  if now >= tonumber(f[6]) or now >= tonumber(f[5]) then return 'expired' end
  if jti == f[2] then return 'current' end
  if jti == f[3] and now < tonumber(f[4]) + grace then return 'grace' end
  if rot ~= nil and rot > tonumber(f[15] or '1') then return 'ahead' end
  return 'reuse'
end
