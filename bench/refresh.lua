-- wrk script for refresh endpoints: every request presents a refresh token from this
-- thread's pool. The pool file (TOKEN_FILE) holds one token per line; thread i of
-- WRK_THREADS takes lines i, i+T, i+2T, ...
--
--   REFRESH_PATH  the endpoint (default /auth/refresh)
--   TOKEN_IN      "header" (Authorization: Bearer, default) or "json:<field>" (JSON body)
--   NEXT_TOKEN    where the rotated token comes back, put at the end of the pool so each
--                 session follows its own chain: "header" (X-Refresh-Token, default),
--                 "body:<field>" ("<field>":"..." in the JSON body), or "reuse" (no
--                 rotation: cycle through the pool)
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  pool = {}
  local total = tonumber(os.getenv("WRK_THREADS") or "1")
  local i = 0
  for line in io.lines(os.getenv("TOKEN_FILE")) do
    if i % total == id then table.insert(pool, line) end
    i = i + 1
  end
  path = os.getenv("REFRESH_PATH") or "/auth/refresh"
  token_in = os.getenv("TOKEN_IN") or "header"
  json_field = string.match(token_in, "^json:(.+)$")
  next_token = os.getenv("NEXT_TOKEN") or "header"
  body_field = string.match(next_token, "^body:(.+)$")
  if body_field then
    body_pattern = '"' .. body_field .. '"%s*:%s*"([^"]+)"'
  end
  cursor = 0
  statuses = {}
end

function request()
  local token
  if next_token == "reuse" then
    cursor = cursor % #pool + 1
    token = pool[cursor]
  else
    token = table.remove(pool, 1)
  end
  token = token or "none"
  if json_field then
    return wrk.format("POST", path, {["Content-Type"] = "application/json"},
      '{"' .. json_field .. '":"' .. token .. '"}')
  end
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. token})
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local token
  if next_token == "header" then
    token = headers["X-Refresh-Token"] or headers["x-refresh-token"]
  elseif body_pattern then
    token = string.match(body, body_pattern)
  end
  if token then table.insert(pool, token) end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do io.write(string.format("status %d %d\n", code, n)) end
  end
  io.write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
