-- Record a launch's handles. KEYS[3] pending, KEYS[4] handles, KEYS[5] index, KEYS[6] counts;
-- ARGV[4] launch id, then handle, workers pairs. A handle already known is not added again. New
-- handles are initializing, or stopping if the launch was cancelled meanwhile. Returns the
-- launch's previous state.
ensure_counts(KEYS[4], KEYS[5], KEYS[6])
local raw = redis.call('HGET', KEYS[3], ARGV[4])
local state, req = 'missing', now
if raw then
  local p = cjson.decode(raw)
  state, req = p.state, p.at or now
end
redis.call('HDEL', KEYS[3], ARGV[4])
local status = 'initializing'
if state == 'cancelled' then status = 'stopping' end
local added = 0
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[4], ARGV[i]) == 0 then
    local w = tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[4], ARGV[i], cjson.encode({w = w, s = status, since = now, launch = ARGV[4], kills = 0,
      req = req}))
    move(KEYS[5], KEYS[6], ARGV[i], w, nil, status)
    added = added + w
  end
end
emit('launched', 'launch', ARGV[4], 'workers', tostring(added), 'state', state)
return state
