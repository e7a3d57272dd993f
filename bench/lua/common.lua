-- Shared by get.lua and post.lua (loaded with dofile): no probe connection, requests read
-- from a file of records, and one parseable summary line at the end.
--
-- Script arguments (after `--` on the wrk command line): RECORDS_FILE THREADS
-- RECORDS_FILE holds records, each a 2-octet big-endian length and that many octets.

-- wrk's default wrk.resolve() connects once to each address to test it and closes without
-- sending anything. `openssl ocsp -multi` (3.0) then spins forever on that connection
-- (http_server_get_asn1_req reads EOF, returns 0, and the child retries the same socket), so
-- one of its children is lost before the run starts. Resolve without the probe.
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup(host, service)
end

local next_index = 0

-- Runs in the setup environment, once per thread before its init().
function setup(thread)
   thread:set("thread_index", next_index)
   next_index = next_index + 1
end

-- This thread's share of the records: every THREADS-th one, so threads send disjoint sets
-- (distinct nonces stay distinct across threads).
function load_records(args)
   local path, threads = args[1], tonumber(args[2]) or 1
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   local records, pos, n = {}, 1, 0
   while pos <= #data do
      local hi, lo = data:byte(pos, pos + 1)
      local len = hi * 256 + lo
      if n % threads == (thread_index or 0) then
         records[#records + 1] = data:sub(pos + 2, pos + 1 + len)
      end
      n = n + 1
      pos = pos + 2 + len
   end
   assert(#records > 0, "no records for this thread in " .. path)
   return records
end

-- Requests rotate through a pre-formatted table; request() only picks the next one.
local requests, count, i = nil, 0, 0

function use_requests(list)
   requests, count, i = list, #list, (thread_index or 0) * 7919
end

function request()
   i = i % count + 1
   return requests[i]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d bytes=%d mean_us=%.1f p50_us=%.0f p90_us=%.0f"
         .. " p99_us=%.0f p999_us=%.0f max_us=%.0f connect=%d read=%d write=%d status=%d"
         .. " timeout=%d\n",
      summary.requests, summary.duration, summary.bytes, latency.mean,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
