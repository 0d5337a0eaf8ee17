-- Write what the provider reported (fleet.state.sweeps Sweeps.apply_status), for the handles whose
-- report differs from the index (the caller sends only those). A dead handle (and a stopping one
-- whose last kill failed) leaves the handles and enters the cleanup hash (with its pool), from
-- which the sweep re-sends its kill until one succeeds. Moves keep to TRANSITIONS (a report that
-- would break it is refused: lua/prelude.lua may_move). One event per kind (and previous status)
-- for the whole call.
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] cleanup_key  dead handles whose remains wait for a kill
--   KEYS[5] index_key    the status index (lua/index.lua)
--   KEYS[6] counts_key   the counts (lua/index.lua)
--   KEYS[7] notice_key   when each interruption still waiting for its replacement was noticed
--                        (lua/interrupt.lua): a worker that runs is taken for the replacement of
--                        the oldest (time from notice to replacement running)
--   KEYS[8] cost_key     the cost hash (lua/index.lua COST): a leaving handle's cost is added
-- ARGV (after the prelude's three):
--   ARGV[4] grace        seconds an initializing handle may be missing from the provider's list
--   ARGV[5] retry        the first cleanup retry (seconds)
--   ARGV[6..]            handle, status pairs
-- Returns {pruned workers, changed handles, gone handles, dead: handle, pool, status it had,
-- revision quadruples}.
local handles_key, cleanup_key, index_key, counts_key, notice_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local grace, retry = tonumber(ARGV[4]), tonumber(ARGV[5])
COST = KEYS[8]
ensure_counts(handles_key, index_key, counts_key)
local function replaced(w)
  for _ = 1, w do
    if redis.call('HLEN', notice_key) == 0 then return end
    local all = redis.call('HGETALL', notice_key)
    local oldest, at = nil, nil
    for j = 1, #all, 2 do
      local t = tonumber(all[j + 1])
      if not at or t < at then oldest, at = all[j], t end
    end
    redis.call('HDEL', notice_key, oldest)
    local seconds = math.max(now - at, 0)
    redis.call('HINCRBY', METRICS, 'replaced|' .. CLUSTER .. '|' .. bucket(seconds), 1)
    redis.call('HINCRBYFLOAT', METRICS, 'replaced_sum|' .. CLUSTER, tostring(seconds))
  end
end
local pruned, changed, gone = 0, 0, 0
local dead = {}
local function clean_up(h, r)
  local c = {w = r.w, tries = 0, next = now + retry}
  if r.p and r.p ~= '' then c.p = r.p end
  redis.call('HSET', cleanup_key, h, cjson.encode(c))
  table.insert(dead, h)
  table.insert(dead, r.p or '')
  table.insert(dead, r.s)
  table.insert(dead, r.rev or '')
end
for i = 6, #ARGV, 2 do
  local h, s = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', handles_key, h)
  local r = raw and read_record(raw)
  if r then
    if s == 'stopped' then
      if r.s == 'stopping' then
        if move(index_key, counts_key, h, r, r.s, nil) then
          redis.call('HDEL', handles_key, h)
          batch('killed', h, r.w)
          batch_cost(LEFT_COST)
          changed = changed + 1
          gone = gone + 1
          if r.kfail then clean_up(h, r) end
        end
      elseif not (r.s == 'initializing' and now - r.since < grace) then
        if move(index_key, counts_key, h, r, r.s, nil) then
          redis.call('HDEL', handles_key, h)
          if r.int and r.int ~= '' then batch('stopped', h, r.w, 'was', r.s, 'interrupted', r.int)
          else batch('stopped', h, r.w, 'was', r.s) end
          batch_cost(LEFT_COST)
          pruned = pruned + r.w
          changed = changed + 1
          gone = gone + 1
          clean_up(h, r)
        end
      end
    elseif r.s ~= 'stopping' and r.s ~= 'draining' and r.s ~= s then
      -- written only on a change: a steady sweep leaves the hash alone, so it never makes a
      -- reconcile's WATCH fail
      if move(index_key, counts_key, h, r, r.s, s) then
        if s == 'running' then
          batch('running', h, r.w)
          if r.req then record_ready(now - r.req, r.w) r.req = nil end
          if not r.int then replaced(r.w) end
        end
        r.s = s
        r.since = now
        changed = changed + 1
        redis.call('HSET', handles_key, h, cjson.encode(r))
      end
    end
  end
end
flush()
return {pruned, changed, gone, dead}
