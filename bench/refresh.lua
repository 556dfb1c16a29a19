-- wrk script: every request presents a refresh token from this thread's pool and puts the
-- rotated one (X-Refresh-Token) back, so each session follows its own chain.
-- The pool file holds one refresh token per line; thread i takes lines i, i+T, i+2T, ...
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
  statuses = {}
end

function request()
  local token = table.remove(pool, 1)
  if token == nil then
    return wrk.format("POST", "/auth/refresh", {["Authorization"] = "Bearer none"})
  end
  return wrk.format("POST", "/auth/refresh", {["Authorization"] = "Bearer " .. token})
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local token = headers["X-Refresh-Token"] or headers["x-refresh-token"]
  if token then table.insert(pool, token) end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do io.write(string.format("status %d %d\n", code, n)) end
  end
  io.write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
