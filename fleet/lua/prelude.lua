-- Prepended to every script that writes events (fleet/scripts.py puts READY_BUCKETS above it).
-- KEYS[1] the cluster's event stream, KEYS[2] the fleet's metrics hash;
-- ARGV[1] the cluster, ARGV[2] the stream's cap, ARGV[3] the time (Unix seconds).
-- emit() appends an event and counts it; record_ready() observes a time to running; both keep
-- the metrics hash exactly as fleet/counters.py's Python writers do.
local EVENTS, METRICS, CLUSTER, MAXLEN, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
local function count_event(kind, n)
  redis.call('HINCRBY', METRICS, 'events|' .. CLUSTER .. '|' .. kind, n or 1)
end
local function emit(kind, ...)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', kind, ...)
  count_event(kind)
end
local function record_ready(seconds, workers)
  workers = workers or 1
  if seconds < 0 then seconds = 0 end
  local le = READY_BUCKETS[#READY_BUCKETS]
  for i = 1, #READY_BUCKETS - 1 do
    if seconds <= tonumber(READY_BUCKETS[i]) then le = READY_BUCKETS[i]; break end
  end
  redis.call('HINCRBY', METRICS, 'ready|' .. CLUSTER .. '|' .. le, workers)
  redis.call('HINCRBYFLOAT', METRICS, 'ready_sum|' .. CLUSTER, tostring(seconds * workers))
  redis.call('HINCRBY', METRICS, 'ready_count|' .. CLUSTER, workers)
end
