-- wrk script for GET requests that cycle through many bearer tokens, one per line of
-- TOKEN_FILE, in file order (thread i of WRK_THREADS starts at line i). A pool larger
-- than the service's verified-token cache makes every request a cache miss.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  pool = {}
  for line in io.lines(os.getenv("TOKEN_FILE")) do
    table.insert(pool, "Bearer " .. line)
  end
  cursor = id % #pool
  statuses = {}
end

function request()
  cursor = cursor % #pool + 1
  return wrk.format("GET", nil, {["Authorization"] = pool[cursor]})
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do io.write(string.format("status %d %d\n", code, n)) end
  end
  io.write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
