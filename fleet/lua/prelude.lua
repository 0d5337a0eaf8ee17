-- Prepended to every script that writes events (fleet/scripts.py puts READY_BUCKETS above it).
-- KEYS[1] the cluster's event stream, KEYS[2] the fleet's metrics hash;
-- ARGV[1] the cluster, ARGV[2] the stream's cap, ARGV[3] the time (Unix seconds).
-- emit() appends one event and counts it; batch()/flush() gather the events of many handles into
-- one event per kind (and shared fields), counted once per handle; record_ready() observes a time
-- to running. A script that calls batch() or record_ready() ends with flush(). The metrics hash
-- is kept exactly as fleet/counters.py's Python writers keep it.
local EVENTS, METRICS, CLUSTER, MAXLEN, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
local SAMPLE = 50  -- handles named in one batch event; `count` says how many there were
local function count_event(kind, n)
  redis.call('HINCRBY', METRICS, 'events|' .. CLUSTER .. '|' .. kind, n or 1)
end
local function emit(kind, ...)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', kind, ...)
  count_event(kind)
end
local batches, order = {}, {}
local function batch(kind, h, w, ...)
  local key = table.concat({kind, ...}, '\0')
  local b = batches[key]
  if not b then
    b = {kind = kind, fields = {...}, handles = {}, n = 0, workers = 0}
    batches[key] = b
    table.insert(order, key)
  end
  b.n = b.n + 1
  b.workers = b.workers + (w or 0)
  if b.n <= SAMPLE then table.insert(b.handles, h) end
end
local ready = {n = 0, sum = 0, by = {}}  -- times to running, written by flush()
local function record_ready(seconds, workers)
  workers = workers or 1
  if seconds < 0 then seconds = 0 end
  local le = READY_BUCKETS[#READY_BUCKETS]
  for i = 1, #READY_BUCKETS - 1 do
    if seconds <= tonumber(READY_BUCKETS[i]) then le = READY_BUCKETS[i]; break end
  end
  ready.by[le] = (ready.by[le] or 0) + workers
  ready.sum = ready.sum + seconds * workers
  ready.n = ready.n + workers
end
local function flush()
  for _, key in ipairs(order) do
    local b = batches[key]
    local names = table.concat(b.handles, ',')
    if b.n > SAMPLE then names = names .. ',...' end
    redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', b.kind, 'count', tostring(b.n),
      'workers', tostring(b.workers), 'handles', names, unpack(b.fields))
    count_event(b.kind, b.n)
  end
  batches, order = {}, {}
  if ready.n > 0 then
    for le, n in pairs(ready.by) do redis.call('HINCRBY', METRICS, 'ready|' .. CLUSTER .. '|' .. le, n) end
    redis.call('HINCRBYFLOAT', METRICS, 'ready_sum|' .. CLUSTER, tostring(ready.sum))
    redis.call('HINCRBY', METRICS, 'ready_count|' .. CLUSTER, ready.n)
    ready = {n = 0, sum = 0, by = {}}
  end
end
