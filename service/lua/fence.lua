-- Fence a Redis that lost its data or was restored from an older snapshot (fence.py).
-- KEYS: (common head: epoch gen events fence) of the partition fenced
-- ARGV: (known_epoch known_gen retention) expected_epoch min_epoch min_gen now deny_until
--       reason partition
-- The known position is not checked here (the caller passes '' ''): fencing is what
-- repairs a Redis behind it. expected_epoch is the epoch the caller read ('' = none): if
-- another process fenced meanwhile, nothing happens and the caller looks again.
-- Returns {'fenced', epoch, gen} or {'raced', current epoch}.
local FENCE = FENCE_KEY
local cur = redis.call('GET', EPOCH_KEY) or ''
if cur ~= ARGV[4] then return {'raced', cur} end
local ep = math.max(tonumber(cur ~= '' and cur or '0'), tonumber(ARGV[5])) + 1
local gen = math.max(tonumber(redis.call('GET', GEN_KEY) or '0'), tonumber(ARGV[6]))
redis.call('SET', EPOCH_KEY, ep)
redis.call('SET', GEN_KEY, gen)
-- every access token issued up to now is denied until it would have expired
local now, untl = tonumber(ARGV[7]), tonumber(ARGV[8])
local before = tonumber(redis.call('GET', FENCE) or '0')
if now > before then
  redis.call('SET', FENCE, ARGV[7], 'EXAT', math.ceil(untl))
end
emit({
  type = 'all.revoked', sub = cjson.null, sid = cjson.null, jti = cjson.null,
  reason = ARGV[9], at = now, ['until'] = untl, epoch = ep, partition = tonumber(ARGV[10]),
})
return {'fenced', ep, gen}
