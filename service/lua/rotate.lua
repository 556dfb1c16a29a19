-- Rotate a session's refresh token in one step.
-- KEYS: (common head: epoch gen events fence) session hash, revocation mark of the
--       user the refresh token names, that user's index, the session's expiry shard,
--       the session's deny key
-- ARGV: (known_epoch known_gen retention) sid presented_jti now new_jti idle_ttl grace
--       deny_until ua ip uid scope_requested('1'|'0') requested_scope rot iat
-- rot and iat: the presented token's rotation number ('' for a token without one) and
-- issue time.
-- Replies (decoded by service/replies.py `rotation`):
--   {'rotated' | 'grace' | 'ahead', uid, jti, iat, exp, cid, scope, gen, epoch, auth, n,
--    fence}
--        n: the rotation number of the refresh token to hand out (jti); ahead: rotated
--        from a token newer than the recorded state (common.lua `judge`); fence: the
--        partition's last fence time ('' when none): the access token issued now must
--        carry a later iat
--   {'reuse', uid, gen, epoch, kind, ip, ua}   kind: concurrent (the presented token was
--        superseded less than the grace ago: most likely the client's own race) or
--        replay; ip and ua of the session's last use
--   {'scope', uid, granted scope}: a live token asked for a scope beyond the session's
--        grant (RFC 6749 section 6); nothing was written, the token is not consumed
--   {'expired' | 'fenced' | 'revoked' | 'mismatch', uid}, {'unknown'} and {'stale'}
-- stale: this Redis is behind the caller's known position (fence.py) and nothing was
-- read or changed; fenced: the session predates a fence and has just been ended;
-- revoked: the session was authenticated before its user's revocation mark and has just
-- been ended; mismatch: the session belongs to another user than the token says.
local SESSION, MARK, INDEX, SHARD, DENY = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local sid, jti = ARGV[4], ARGV[5]
local ep, gen = position()
if is_behind(ep, gen) then return {'stale'} end
local now = tonumber(ARGV[6])
-- The current refresh token was issued at `last` (iat: its whole second) and expires at
-- `idle`; the previous one is honoured until `last` + grace. `plast` is when the previous
-- one was issued: every older token was superseded by then.
local f = read_session(SESSION)
local uid = f[1]
if uid and uid ~= ARGV[13] then return {'mismatch', uid} end
local grace = tonumber(ARGV[9])
local rot = tonumber(ARGV[16])
local verdict = judge(f, sid, jti, now, ep, MARK, grace, rot)
if verdict == 'unknown' then return {'unknown'} end
if verdict == 'fenced' or verdict == 'revoked' then
  redis.call('DEL', SESSION)
  redis.call('ZREM', INDEX, sid)
  redis.call('ZREM', SHARD, sid .. ':' .. uid)
  return {verdict, uid}
end
if verdict == 'expired' then return {'expired', uid} end
local auth = f[10] or f[11]
if verdict ~= 'reuse' and ARGV[14] == '1' then
  local granted = {}
  for word in string.gmatch(f[8] or '', '%S+') do granted[word] = true end
  for word in string.gmatch(ARGV[15], '%S+') do
    if not granted[word] then return {'scope', uid, f[8] or ''} end
  end
end
if verdict == 'current' or verdict == 'ahead' then
  local iat = math.floor(now)
  local exp = math.min(iat + tonumber(ARGV[8]), math.floor(tonumber(f[5])))
  -- the presented token was issued at `last`, or (ahead) at its own iat
  local issued = f[4]
  local n = tonumber(f[15] or '1') + 1
  if verdict == 'ahead' then issued, n = ARGV[17], rot + 1 end
  redis.call('HSET', SESSION, 'cur', ARGV[7], 'prev', jti, 'idle', exp, 'last', ARGV[6],
    'plast', issued, 'ua', ARGV[11], 'ip', ARGV[12], 'n', n)
  expire_at(SESSION, exp)
  redis.call('ZADD', SHARD, exp, sid .. ':' .. uid)
  gen = redis.call('INCR', GEN_KEY)
  local status = 'rotated'
  if verdict == 'ahead' then status = 'ahead' end
  return {status, uid, ARGV[7], iat, exp, f[7], f[8], gen, ep, auth, n,
    redis.call('GET', FENCE_KEY) or ''}
end
if verdict == 'grace' then
  return {'grace', uid, f[2], math.floor(tonumber(f[4])), tonumber(f[6]), f[7], f[8], gen, ep,
    auth, tonumber(f[15] or '1'), redis.call('GET', FENCE_KEY) or ''}
end
-- The previous token past the grace is a replay; an older one was superseded by `plast`.
local kind = 'replay'
if jti ~= f[3] and f[14] and now < tonumber(f[14]) + grace then kind = 'concurrent' end
revoke_session(SESSION, DENY, INDEX, SHARD, sid, uid, 'refresh_token_reuse', now, ARGV[10], kind)
gen = redis.call('INCR', GEN_KEY)
return {'reuse', uid, gen, ep, kind, f[12] or '', f[13] or ''}
