-- wrk script for tools/soak.sh: POST /v1/completions with a short prompt and max_tokens 4,
-- cycling over the base model and the two demo adapters (so every request mixes adapters
-- in the same batches), counting responses by HTTP status in each wrk thread.
-- Environment: SOAK_TAG (prefix of the BENCH names, e.g. soak_64), SOAK_MODELS
-- (comma-separated model names; default base,demo-a,demo-b).
-- done() prints "BENCH <tag>_<what> <value> <unit>" lines: requests, req/s, p50/p99 (ms),
-- 2xx, 5xx, one line per other status (and a "#" line with its first body), and wrk's
-- socket errors.

local models = {}
for m in string.gmatch(os.getenv("SOAK_MODELS") or "base,demo-a,demo-b", "[^,]+") do
  models[#models + 1] = m
end
local bodies = {}
for i, m in ipairs(models) do
  bodies[i] = '{"model":"' .. m .. '","prompt":"Once upon a time","max_tokens":4,' ..
              '"temperature":0}'
end
local headers = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  thread:set("offset", #threads)  -- threads start on different models
  threads[#threads + 1] = thread
end

function init(args)
  statuses = {}  -- globals: read back by done() through thread:get
  samples = {}   -- the first body seen per non-2xx status (why it was refused)
  counter = offset or 0
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/completions", headers, bodies[(counter % #bodies) + 1])
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status < 200 or status > 299) and not samples[status] then
    samples[status] = string.sub(body or "", 1, 300)
  end
end

function done(summary, latency, requests)
  local tag = os.getenv("SOAK_TAG") or "soak"
  local function bench(what, value, unit)
    io.write(string.format("BENCH %s_%s %s %s\n", tag, what, value, unit))
  end
  local total, sample, ok, fivexx = {}, {}, 0, 0
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses") or {}) do
      total[code] = (total[code] or 0) + n
    end
    for code, body in pairs(t:get("samples") or {}) do
      sample[code] = sample[code] or body
    end
  end
  local codes = {}
  for code, n in pairs(total) do
    if code >= 200 and code < 300 then ok = ok + n
    else
      codes[#codes + 1] = code
      if code >= 500 then fivexx = fivexx + n end
    end
  end
  table.sort(codes)
  local secs = summary.duration / 1e6
  bench("requests", summary.requests, "requests")
  bench("rps", string.format("%.1f", summary.requests / secs), "req/s")
  bench("p50", string.format("%.2f", latency:percentile(50) / 1000), "ms")
  bench("p99", string.format("%.2f", latency:percentile(99) / 1000), "ms")
  bench("2xx", ok, "responses")
  bench("5xx", fivexx, "responses")
  for _, code in ipairs(codes) do
    bench("status_" .. code, total[code], "responses")
    io.write(string.format("# %s: first %d body: %s\n", tag, code,
                           string.gsub(sample[code] or "", "\n", " ")))
  end
  local e = summary.errors
  bench("socket_errors", e.connect + e.read + e.write + e.timeout, "errors")
  io.write(string.format("# %s: %d requests in %.1f s; socket errors connect %d read %d " ..
                         "write %d timeout %d\n", tag, summary.requests, secs, e.connect,
                         e.read, e.write, e.timeout))
end
