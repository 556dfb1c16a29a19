-- Revoke every session of a user (logout-all, admin revoke, delete), or every other one
-- (password change), in O(1) whatever the number of sessions: the user's revocation
-- mark says "every session authenticated at or before `at`, except the kept one", and
-- every script that uses a session checks it (rotate.lua, create.lua, expire.lua; the
-- deny check for access tokens). One user.revoked event says the same to subscribers
-- (its `sid` is the kept session, null when none).
-- KEYS: user index, user revocation mark, kept session hash (any key when none is kept)
-- ARGV: prefix uid reason deny_until retention keep_sid known_epoch known_gen
-- Returns {n, gen, epoch, at}: how many sessions ended, the position after the write and
-- the mark's time (Redis's clock); {'stale'} when this Redis is behind the known position.
local prefix, uid, reason = ARGV[1], ARGV[2], ARGV[3]
local untl, retention, keep = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local ep, gen = position(prefix)
if is_behind(ep, gen, ARGV[7], ARGV[8]) then return {'stale'} end
local at = clock_us()
local old_at, old_keep = user_mark(KEYS[2])
local kept_abs = nil
if keep ~= '' then
  -- only a live session of the user's is kept: never one an earlier mark already ended
  -- (a logout-all that landed between the caller's authentication and this script)
  local f = redis.call('HMGET', KEYS[3], 'uid', 'abs', 'auth', 'created')
  if f[1] == uid and not revoked_by_mark(old_at, old_keep, keep, f[3] or f[4]) then
    kept_abs = f[2]
  else
    keep = ''
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at)
local n = redis.call('ZCARD', KEYS[1])
if keep ~= '' and redis.call('ZSCORE', KEYS[1], keep) then n = n - 1 end
-- The mark lasts while any session it ends could still be used (the index's latest
-- absolute deadline) and while their access tokens could be unexpired.
local top = redis.call('ZRANGE', KEYS[1], 0, 0, 'REV', 'WITHSCORES')
local last_use = math.max(untl, tonumber(top[2] or '0'))
if old_at == nil or at > old_at then
  local mark = fmt_time(at)
  if keep ~= '' then mark = mark .. ' ' .. keep end
  local ttl = redis.call('TTL', KEYS[2])
  local old_end = 0
  if ttl > 0 then old_end = tonumber(redis.call('TIME')[1]) + ttl end
  redis.call('SET', KEYS[2], mark, 'EXAT', math.ceil(math.max(last_use, old_end)))
end
-- UNLINK frees a big index off the main thread; the ended sessions' hashes stay until
-- their next use or their idle deadline, refused by the mark.
redis.call('UNLINK', KEYS[1])
if kept_abs then
  redis.call('ZADD', KEYS[1], kept_abs, keep)
  expire_at(KEYS[1], kept_abs)
end
local kept_sid = cjson.null
if keep ~= '' then kept_sid = keep end
emit(prefix .. ':events', prefix .. ':revocations', retention, {
  type = 'user.revoked', sub = uid, sid = kept_sid, jti = cjson.null, reason = reason,
  at = fmt_time(at), ['until'] = untl,
})
local g, e = bump(prefix)
return {n, g, e, fmt_time(at)}
