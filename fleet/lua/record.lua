-- Record a launch's handles. KEYS[3] pending, KEYS[4] handles, KEYS[5] index, KEYS[6] counts;
-- ARGV[4] launch id, ARGV[5] its pool and ARGV[6] its revision (the pending record's win: it was
-- planned so), then handle, workers pairs. A handle already known is not added again. New
-- handles are initializing, or stopping if the launch was cancelled meanwhile. Returns the
-- launch's previous state.
ensure_counts(KEYS[4], KEYS[5], KEYS[6])
local raw = redis.call('HGET', KEYS[3], ARGV[4])
local state, req, pool, rev = 'missing', now, ARGV[5], ARGV[6]
if raw then
  local p = cjson.decode(raw)
  state, req = p.state, p.at or now
  if p.pool and p.pool ~= '' then pool = p.pool end
  if p.rev and p.rev ~= '' then rev = p.rev end
end
redis.call('HDEL', KEYS[3], ARGV[4])
local status = 'initializing'
if state == 'cancelled' then status = 'stopping' end
local added = 0
for i = 7, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[4], ARGV[i]) == 0 then
    local w = tonumber(ARGV[i + 1])
    local r = {w = w, s = status, since = now, launch = ARGV[4], kills = 0, req = req, b = now}
    if pool ~= '' then r.p = pool end
    if rev ~= '' then r.rev = rev end
    redis.call('HSET', KEYS[4], ARGV[i], cjson.encode(r))
    move(KEYS[5], KEYS[6], ARGV[i], r, nil, status)
    added = added + w
  end
end
if pool ~= '' then
  redis.call('HINCRBY', METRICS, 'pool_launches|' .. CLUSTER .. '|' .. pool, added)
  emit('launched', 'launch', ARGV[4], 'workers', tostring(added), 'state', state, 'pool', pool)
else
  emit('launched', 'launch', ARGV[4], 'workers', tostring(added), 'state', state)
end
return state
