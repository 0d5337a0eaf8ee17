-- Prepended to every script that writes events or handles (fleet/scripts.py puts its generated
-- constants above it: READY_BUCKETS, the time-to-running buckets of fleet/counters.py; LIVE and
-- TRANSITIONS, fleet.model's live statuses and table of allowed handle transitions).
--
-- Every such script is called with these keys and args first (fleet.state.base StoreBase._script);
-- its own keys start at KEYS[3], its own args at ARGV[4]:
--   KEYS[1] events_key   the cluster's event stream
--   KEYS[2] metrics_key  the fleet's metrics hash (fleet/counters.py)
--   ARGV[1] cluster      the cluster's name
--   ARGV[2] maxlen       the event stream's cap
--   ARGV[3] now          the time (Redis time, Unix seconds)
--
-- emit() appends one event and counts it; batch()/flush() gather the events of many handles into
-- one event per kind (and shared fields), counted once per handle, with the summed `cost` of
-- the handles batch_cost() priced; record_ready() observes a time
-- to running. A script that calls batch() or record_ready() ends with flush(). The metrics hash
-- is kept exactly as fleet/counters.py's Python writers keep it. count_fields() and index_value()
-- are the counts and index grammar (fleet/grammar.py); may_move() checks a move against TRANSITIONS.
local EVENTS, METRICS = KEYS[1], KEYS[2]
local CLUSTER, MAXLEN, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local SAMPLE = 50  -- handles named in one batch event; `count` says how many there were
local function count_event(kind, n)
  redis.call('HINCRBY', METRICS, 'events|' .. CLUSTER .. '|' .. kind, n or 1)
end
local function emit(kind, ...)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', kind, ...)
  count_event(kind)
end
local batches, order, last = {}, {}, nil
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
  last = b
end
-- Add `usd` to the `cost` of the batch event the last batch() call went into (a handle's cost)
local function batch_cost(usd)
  if last and usd > 0 then last.cost = (last.cost or 0) + usd end
end
-- The `le` of the (non-cumulative) time-to-running bucket `seconds` falls in (fleet.counters.bucket_for)
local function bucket(seconds)
  for i = 1, #READY_BUCKETS - 1 do
    if seconds <= tonumber(READY_BUCKETS[i]) then return READY_BUCKETS[i] end
  end
  return READY_BUCKETS[#READY_BUCKETS]
end
local ready = {n = 0, sum = 0, by = {}}  -- times to running, written by flush()
local function record_ready(seconds, workers)
  workers = workers or 1
  if seconds < 0 then seconds = 0 end
  local le = bucket(seconds)
  ready.by[le] = (ready.by[le] or 0) + workers
  ready.sum = ready.sum + seconds * workers
  ready.n = ready.n + workers
end
local function flush()
  for _, key in ipairs(order) do
    local b = batches[key]
    local names = table.concat(b.handles, ',')
    if b.n > SAMPLE then names = names .. ',...' end
    local fields = b.fields
    if b.cost then
      fields = {unpack(b.fields)}
      table.insert(fields, 'cost')
      table.insert(fields, string.format('%.6f', b.cost))
    end
    redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', b.kind, 'count', tostring(b.n),
      'workers', tostring(b.workers), 'handles', names, unpack(fields))
    count_event(b.kind, b.n)
  end
  batches, order, last = {}, {}, nil
  if ready.n > 0 then
    for le, n in pairs(ready.by) do redis.call('HINCRBY', METRICS, 'ready|' .. CLUSTER .. '|' .. le, n) end
    redis.call('HINCRBYFLOAT', METRICS, 'ready_sum|' .. CLUSTER, tostring(ready.sum))
    redis.call('HINCRBY', METRICS, 'ready_count|' .. CLUSTER, ready.n)
    ready = {n = 0, sum = 0, by = {}}
  end
end
-- The counts grammar (fleet/grammar.py `fields`): what handle record r (r.w workers, r.p its pool,
-- r.int its interruption, r.rev its revision) adds to the counts while in status s (nil: not in
-- Redis, nothing), as {field, number} pairs in a fixed order.
local function count_fields(r, s)
  if not s then return {} end
  local out = {{s, r.w}, {s .. ':h', 1}}
  if r.p and r.p ~= '' then table.insert(out, {s .. '@' .. r.p, r.w}) end
  if r.int and r.int ~= '' then table.insert(out, {'int', r.w}) end
  if r.rev and r.rev ~= '' and LIVE[s] then table.insert(out, {'r:' .. r.rev, r.w}) end
  return out
end
-- The index's value for handle record r in status s (fleet/grammar.py `index_value`)
local function index_value(r, s)
  if r.p and r.p ~= '' then return s .. '@' .. r.p end
  return s
end
-- Whether TRANSITIONS (fleet.model) lets handle h move from status `old` to `new` (nil: not in
-- Redis). An illegal move is logged in Redis's log; the caller writes nothing of it.
local function may_move(h, old, new)
  if old == new then return true end
  local allowed = TRANSITIONS[old or '']
  if allowed and allowed[new or ''] then return true end
  redis.log(redis.LOG_WARNING, 'fleet: refused an illegal handle transition in ' .. tostring(CLUSTER) .. ': '
    .. tostring(h) .. ' ' .. tostring(old) .. ' -> ' .. tostring(new))
  return false
end
