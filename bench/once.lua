-- wrk script that presents each bearer token of TOKEN_FILE at most once (thread i of
-- WRK_THREADS takes lines i, i+T, ...) with METHOD (default POST) to the URL's path: for
-- logouts, whose token is spent by the request. Once a thread's tokens are all sent its
-- connections idle (delay) until wrk's -d ends, so the caller gives it more tokens than
-- the run can use; it prints "exhausted 1" when a thread ran out (the rate is then low).
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
  method = os.getenv("METHOD") or "POST"
  sent = 0
  exhausted = 0
  statuses = {}
end

function delay()
  if sent >= #pool then
    exhausted = 1
    return 3600000
  end
  return 0
end

function request()
  sent = sent + 1
  return wrk.format(method, nil, {["Authorization"] = "Bearer " .. (pool[sent] or "none")})
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local x = 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do io.write(string.format("status %d %d\n", code, n)) end
    x = math.max(x, t:get("exhausted"))
  end
  io.write(string.format("exhausted %d\n", x))
  io.write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
