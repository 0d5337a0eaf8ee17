-- Write what the provider reported. KEYS[3] handles, KEYS[4] cleanup; ARGV[4] listing grace,
-- ARGV[5] first cleanup retry (s), then handle, status pairs. A dead handle (and a stopping one
-- whose last kill failed) leaves the handles and enters `cleanup`, from which the sweep re-sends
-- its kill until one succeeds. Moves keep to fleet.model.TRANSITIONS.
local grace, retry = tonumber(ARGV[4]), tonumber(ARGV[5])
local pruned, changed, gone = 0, 0, 0
local dead = {}
local function clean_up(h, w)
  redis.call('HSET', KEYS[4], h, cjson.encode({w = w, tries = 0, next = now + retry}))
  table.insert(dead, h)
end
for i = 6, #ARGV, 2 do
  local h, s = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  if raw then
    local r = cjson.decode(raw)
    if s == 'stopped' then
      if r.s == 'stopping' then
        redis.call('HDEL', KEYS[3], h)
        emit('killed', 'handle', h, 'workers', tostring(r.w))
        changed = changed + 1
        gone = gone + 1
        if r.kfail then clean_up(h, r.w) end
      elseif not (r.s == 'initializing' and now - r.since < grace) then
        redis.call('HDEL', KEYS[3], h)
        emit('stopped', 'handle', h, 'workers', tostring(r.w), 'was', r.s)
        pruned = pruned + r.w
        changed = changed + 1
        gone = gone + 1
        clean_up(h, r.w)
      end
    else
      -- written only on a change: a steady sweep leaves the hash alone, so it never makes a
      -- reconcile's WATCH on it fail (with 10,000 handles that retried a scale-down for seconds)
      if r.s ~= 'stopping' and r.s ~= 'draining' and r.s ~= s then
        if s == 'running' then
          emit('running', 'handle', h, 'workers', tostring(r.w))
          if r.req then record_ready(now - r.req, r.w) r.req = nil end
        end
        r.s = s
        r.since = now
        changed = changed + 1
        redis.call('HSET', KEYS[3], h, cjson.encode(r))
      end
    end
  end
end
return {pruned, changed, gone, dead}
