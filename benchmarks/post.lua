-- wrk script: POST the body in the file named by the first script argument (JSON unless a
-- later argument "Name: value" sets Content-Type), then print one line "BENCH_JSON {...}"
-- with counts, error classes and latency percentiles (us).
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, '
    .. '"p95_us": %.0f, "p99_us": %.0f, "mean_us": %.1f, "max_us": %.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, p(50), p(95), p(99), latency.mean, latency.max))
end
