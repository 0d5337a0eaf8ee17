-- Write what the provider reported, for the handles whose report differs from the index (the
-- caller sends only those). KEYS[3] handles, KEYS[4] cleanup, KEYS[5] index, KEYS[6] counts;
-- ARGV[4] listing grace, ARGV[5] first cleanup retry (s), then handle, status pairs. A dead
-- handle (and a stopping one whose last kill failed) leaves the handles and enters `cleanup`
-- (with its pool),
-- from which the sweep re-sends its kill until one succeeds. Moves keep to
-- fleet.model.TRANSITIONS. One event per kind (and previous status) for the whole call.
ensure_counts(KEYS[3], KEYS[5], KEYS[6])
-- KEYS[7] notice: when each interruption still waiting for its replacement was noticed. A worker
-- that runs is taken for the replacement of the oldest: time from notice to replacement running.
local function replaced(w)
  for _ = 1, w do
    if redis.call('HLEN', KEYS[7]) == 0 then return end
    local all = redis.call('HGETALL', KEYS[7])
    local oldest, at = nil, nil
    for j = 1, #all, 2 do
      local t = tonumber(all[j + 1])
      if not at or t < at then oldest, at = all[j], t end
    end
    redis.call('HDEL', KEYS[7], oldest)
    local seconds = math.max(now - at, 0)
    local le = READY_BUCKETS[#READY_BUCKETS]
    for k = 1, #READY_BUCKETS - 1 do
      if seconds <= tonumber(READY_BUCKETS[k]) then le = READY_BUCKETS[k]; break end
    end
    redis.call('HINCRBY', METRICS, 'replaced|' .. CLUSTER .. '|' .. le, 1)
    redis.call('HINCRBYFLOAT', METRICS, 'replaced_sum|' .. CLUSTER, tostring(seconds))
  end
end
local grace, retry = tonumber(ARGV[4]), tonumber(ARGV[5])
local pruned, changed, gone = 0, 0, 0
local dead = {}
local function clean_up(h, r)
  local c = {w = r.w, tries = 0, next = now + retry}
  if r.p and r.p ~= '' then c.p = r.p end
  redis.call('HSET', KEYS[4], h, cjson.encode(c))
  table.insert(dead, h)
  table.insert(dead, r.p or '')
  table.insert(dead, r.s)
  table.insert(dead, r.rev or '')
end
for i = 6, #ARGV, 2 do
  local h, s = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  local r = raw and read_record(raw)
  if r then
    if s == 'stopped' then
      if r.s == 'stopping' then
        redis.call('HDEL', KEYS[3], h)
        move(KEYS[5], KEYS[6], h, r, r.s, nil)
        batch('killed', h, r.w)
        changed = changed + 1
        gone = gone + 1
        if r.kfail then clean_up(h, r) end
      elseif not (r.s == 'initializing' and now - r.since < grace) then
        redis.call('HDEL', KEYS[3], h)
        move(KEYS[5], KEYS[6], h, r, r.s, nil)
        if r.int and r.int ~= '' then batch('stopped', h, r.w, 'was', r.s, 'interrupted', r.int)
        else batch('stopped', h, r.w, 'was', r.s) end
        pruned = pruned + r.w
        changed = changed + 1
        gone = gone + 1
        clean_up(h, r)
      end
    elseif r.s ~= 'stopping' and r.s ~= 'draining' and r.s ~= s then
      -- written only on a change: a steady sweep leaves the hash alone, so it never makes a
      -- reconcile's WATCH fail
      if s == 'running' then
        batch('running', h, r.w)
        if r.req then record_ready(now - r.req, r.w) r.req = nil end
        if not r.int then replaced(r.w) end
      end
      move(KEYS[5], KEYS[6], h, r, r.s, s)
      r.s = s
      r.since = now
      changed = changed + 1
      redis.call('HSET', KEYS[3], h, cjson.encode(r))
    end
  end
end
flush()
return {pruned, changed, gone, dead}  -- dead: handle, pool, status it had, revision quadruples
