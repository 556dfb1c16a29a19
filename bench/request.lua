-- wrk script for one fixed request, counting statuses and printing p50/p99.
--   METHOD  GET (default) or POST;  BODY  a JSON body (sets Content-Type);
--   BEARER  a token for Authorization: Bearer
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = os.getenv("METHOD") or "GET"
  local body = os.getenv("BODY")
  if body then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
  end
  local bearer = os.getenv("BEARER")
  if bearer then wrk.headers["Authorization"] = "Bearer " .. bearer end
  statuses = {}
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
