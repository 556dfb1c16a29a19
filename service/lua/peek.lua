-- Read, without writing, whether a refresh token may still refresh its session: the
-- rule of rotate.lua (common.lua `judge`), so introspection and the token endpoint's
-- scope check agree with the refresh itself.
-- KEYS: (common head: epoch gen events fence) session hash, revocation mark of `uid`
-- ARGV: (known_epoch known_gen retention) sid presented_jti now grace uid rot
-- Replies (decoded by service/replies.py `peek`):
--   {'current' | 'grace' | 'ahead', uid, cid, scope}
--   {'expired' | 'fenced' | 'revoked' | 'reuse' | 'mismatch', uid} and {'unknown'}
local SESSION, MARK = KEYS[5], KEYS[6]
local f = read_session(SESSION)
if f[1] and f[1] ~= ARGV[8] then return {'mismatch', f[1]} end
local ep = position()
local verdict = judge(f, ARGV[4], ARGV[5], tonumber(ARGV[6]), ep, MARK, tonumber(ARGV[7]),
  tonumber(ARGV[9]))
if verdict == 'unknown' then return {'unknown'} end
if verdict == 'current' or verdict == 'grace' or verdict == 'ahead' then
  return {verdict, f[1], f[7] or '', f[8] or ''}
end
return {verdict, f[1]}
