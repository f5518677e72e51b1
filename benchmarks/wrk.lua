-- wrk script for the ForYou benchmarks. Arguments after `--`:
--   get    <path>                                   the same GET every time (floor, healthz)
--   feed   <users> <n>                              GET /v1/users/u<random>/feed?n=<n>
--   events <users> <items> <batch> <nonce> <ts>     POST /v1/events with <batch> fresh events
-- done() prints one line "WRKJSON {...}" with the counts and latency percentiles (microseconds).
-- Headers given with -H (the API key: -H "Authorization: Bearer <key>") go with every request.

local mode, users, items, n, batch, nonce, ts, path
local headers = { ["Content-Type"] = "application/json" }
local counter = 0
local thread_no = 0
local threads = {}

function setup(thread)
   thread_no = thread_no + 1
   thread:set("tid", thread_no)
   table.insert(threads, thread)
end

function init(args)
   mode = args[1] or "get"
   if mode == "get" then
      path = args[2] or "/"
   elseif mode == "feed" then
      users = tonumber(args[2])
      n = args[3] or "10"
   elseif mode == "events" then
      users = tonumber(args[2])
      items = tonumber(args[3])
      batch = tonumber(args[4])
      nonce = args[5]
      ts = args[6]
   end
   math.randomseed(os.time() * 1000 + (tid or 0) * 7919 + math.floor(os.clock() * 1e6))
   for name, value in pairs(wrk.headers) do  -- wrk.format uses wrk.headers only when given no headers
      if headers[name] == nil then headers[name] = value end
   end
end

local function events_body()
   local parts = {}
   for k = 1, batch do
      counter = counter + 1
      local id = string.format("w%s-%d-%d", nonce, tid or 0, counter)
      local u = math.random(0, users - 1)
      local it = math.random(0, items - 1)
      local r = math.random()
      if r < 0.88 then
         parts[k] = string.format('{"id":"%s","user":"u%d","item":"i%d","type":"view","watch_s":%.2f,"ts":"%s"}',
            id, u, it, math.random() * 40, ts)
      else
         local kind = (r < 0.95 and "like") or (r < 0.97 and "share") or (r < 0.99 and "follow") or "comment"
         parts[k] = string.format('{"id":"%s","user":"u%d","item":"i%d","type":"%s","ts":"%s"}',
            id, u, it, kind, ts)
      end
   end
   return '{"events":[' .. table.concat(parts, ",") .. ']}'
end

function request()
   if mode == "feed" then
      return wrk.format("GET", "/v1/users/u" .. math.random(0, users - 1) .. "/feed?n=" .. n)
   elseif mode == "events" then
      return wrk.format("POST", "/v1/events", headers, events_body())
   end
   return wrk.format("GET", path)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
      '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
