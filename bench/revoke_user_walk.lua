-- The O(sessions) walk that tokend's revoke_user.lua replaced (tokend before its per-user
-- revocation mark): the baseline of bench/user_revocation.py, never used by tokend.
-- Revoke every session of a user (logout-all, admin revoke), or every other one
-- (password change).
-- KEYS: user index, user deny key
-- ARGV: prefix uid reason now deny_until retention keep_sid
-- Returns {n, gen, epoch}: how many sessions ended, and the position after the write.
-- Session keys are derived from the index here; on Redis Cluster this script would
-- have to run per slot.
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
