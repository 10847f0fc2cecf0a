-- wrk script: POST a JSON body (WRK_BODY) to WRK_PATH with the API key
-- (or, with WRK_PATHS, to each of its space-separated paths in turn;
-- WRK_METHOD=GET: no body); done() prints one JSON line with rps and
-- latency percentiles (ms).
wrk.method = os.getenv("WRK_METHOD") or "POST"
wrk.path = os.getenv("WRK_PATH")
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = os.getenv("WRK_KEY")

local paths = {}
for p in string.gmatch(os.getenv("WRK_PATHS") or "", "%S+") do paths[#paths + 1] = p end
if #paths > 0 then
  local i = 0
  function request()
    i = i % #paths + 1
    return wrk.format(nil, paths[i])
  end
end

local errors = 0
function response(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.2f,"rps":%.0f,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"non_200":%d,"socket_errors":%d}\n',
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    errors + summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
