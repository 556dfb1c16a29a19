-- Revoke every session of a user (logout-all, admin revoke, delete), or every other one
-- (password change), in O(1) whatever the number of sessions: the user's revocation
-- mark says "every session authenticated at or before `at`, except the kept one", and
-- every script that uses a session checks it (rotate.lua, create.lua, expire.lua; the
-- deny check for access tokens). One user.revoked event says the same to subscribers
-- (its `sid` is the kept session, null when none).
-- KEYS: (common head: epoch gen events fence) user index, user revocation mark, kept
--       session hash (any key of the user's when none is kept)
-- ARGV: (known_epoch known_gen retention) uid reason deny_until keep_sid
-- Returns {n, gen, epoch, at}: how many sessions ended, the position after the write and
-- the mark's time (Redis's clock); {'stale'} when this Redis is behind the known position.
local INDEX, MARK, KEPT = KEYS[5], KEYS[6], KEYS[7]
local uid, reason, untl, keep = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local ep, gen = position()
if is_behind(ep, gen) then return {'stale'} end
local at = clock_us()
local old_at, old_keep = user_mark(MARK)
local kept_abs = nil
if keep ~= '' then
  -- only a live session of the user's is kept: never one an earlier mark already ended
  -- (a logout-all that landed between the caller's authentication and this script)
  local f = redis.call('HMGET', KEPT, 'uid', 'abs', 'auth', 'created')
  if f[1] == uid and not revoked_by_mark(old_at, old_keep, keep, f[3] or f[4]) then
    kept_abs = f[2]
  else
    keep = ''
  end
end
redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', at)
local n = redis.call('ZCARD', INDEX)
if keep ~= '' and redis.call('ZSCORE', INDEX, keep) then n = n - 1 end
-- The mark lasts while any session it ends could still be used (the index's latest
-- absolute deadline) and while their access tokens could be unexpired.
local top = redis.call('ZRANGE', INDEX, 0, 0, 'REV', 'WITHSCORES')
local last_use = math.max(untl, tonumber(top[2] or '0'))
if old_at == nil or at > old_at then
  local mark = fmt_time(at)
  if keep ~= '' then mark = mark .. ' ' .. keep end
  local ttl = redis.call('TTL', MARK)
  local old_end = 0
  if ttl > 0 then old_end = tonumber(redis.call('TIME')[1]) + ttl end
  redis.call('SET', MARK, mark, 'EXAT', math.ceil(math.max(last_use, old_end)))
end
-- UNLINK frees a big index off the main thread; the ended sessions' hashes stay until
-- their next use or their idle deadline, refused by the mark.
redis.call('UNLINK', INDEX)
if kept_abs then
  redis.call('ZADD', INDEX, kept_abs, keep)
  expire_at(INDEX, kept_abs)
end
local kept_sid = cjson.null
if keep ~= '' then kept_sid = keep end
emit({
  type = 'user.revoked', sub = uid, sid = kept_sid, jti = cjson.null, reason = reason,
  at = fmt_time(at), ['until'] = untl,
})
local g, e = bump()
return {n, g, e, fmt_time(at)}
