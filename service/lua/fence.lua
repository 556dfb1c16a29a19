-- Fence a Redis that lost its data or was restored from an older snapshot (fence.py).
-- ARGV: prefix expected_epoch min_epoch min_gen now deny_until retention reason
-- expected_epoch is the epoch the caller read ('' = none): if another process fenced
-- meanwhile, nothing happens and the caller looks again.
-- Returns {'fenced', epoch, gen} or {'raced', current epoch}.
local prefix = ARGV[1]
local cur = redis.call('GET', prefix .. ':epoch') or ''
if cur ~= ARGV[2] then return {'raced', cur} end
local ep = math.max(tonumber(cur ~= '' and cur or '0'), tonumber(ARGV[3])) + 1
local gen = math.max(tonumber(redis.call('GET', prefix .. ':gen') or '0'), tonumber(ARGV[4]))
redis.call('SET', prefix .. ':epoch', ep)
redis.call('SET', prefix .. ':gen', gen)
-- every access token issued up to now is denied until it would have expired
local now, untl = tonumber(ARGV[5]), tonumber(ARGV[6])
local before = tonumber(redis.call('GET', prefix .. ':fence') or '0')
if now > before then
  redis.call('SET', prefix .. ':fence', ARGV[5], 'EXAT', math.ceil(untl))
end
emit(prefix .. ':events', prefix .. ':revocations', ARGV[7], {
  type = 'all.revoked', sub = cjson.null, sid = cjson.null, jti = cjson.null,
  reason = ARGV[8], at = now, ['until'] = untl, epoch = ep,
})
return {'fenced', ep, gen}
