-- Record a launch's handles (fleet.state.launches Launches.record_launch). A handle already known
-- is not added again. New handles are initializing, or stopping if the launch was cancelled
-- meanwhile; the pending record's pool and revision win over the args (it was planned so).
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] pending_key  the cluster's pending launches
--   KEYS[4] handles_key  the cluster's handle records
--   KEYS[5] index_key    the status index (lua/index.lua)
--   KEYS[6] counts_key   the counts (lua/index.lua)
--   KEYS[7] cost_key     the cost hash (lua/index.lua COST): the handles' price joins the run rate
-- ARGV (after the prelude's three):
--   ARGV[4] launch_id    the launch
--   ARGV[5] pool         its pool ('' for none)
--   ARGV[6] rev          its revision ('' for none)
--   ARGV[7] usd          what one handle costs per hour ('' for unknown: the price the claim
--                        wrote in the pending record, if any; else the handles cost 0)
--   ARGV[8..]            handle, workers pairs
-- Returns the launch's previous state ('missing' if it had no pending record).
local pending_key, handles_key, index_key, counts_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local launch_id, usd = ARGV[4], tonumber(ARGV[7])
COST = KEYS[7]
ensure_counts(handles_key, index_key, counts_key)
local raw = redis.call('HGET', pending_key, launch_id)
local state, req, pool, rev = 'missing', now, ARGV[5], ARGV[6]
if raw then
  local p = cjson.decode(raw)
  state, req = p.state, p.at or now
  if p.pool and p.pool ~= '' then pool = p.pool end
  if p.rev and p.rev ~= '' then rev = p.rev end
  if not usd then usd = tonumber(p.usd) end
end
if usd and not (usd >= 0 and usd < 1e6) then usd = nil end
redis.call('HDEL', pending_key, launch_id)
local status = 'initializing'
if state == 'cancelled' then status = 'stopping' end
local added = 0
for i = 8, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HEXISTS', handles_key, h) == 0 then
    local w = tonumber(ARGV[i + 1])
    local r = {w = w, s = status, since = now, launch = launch_id, kills = 0, req = req, b = now}
    if pool ~= '' then r.p = pool end
    if rev ~= '' then r.rev = rev end
    if usd then r.usd = usd end
    if move(index_key, counts_key, h, r, nil, status) then
      redis.call('HSET', handles_key, h, cjson.encode(r))
      added = added + w
    end
  end
end
local fields = {'launch', launch_id, 'workers', tostring(added), 'state', state}
if pool ~= '' then
  redis.call('HINCRBY', METRICS, 'pool_launches|' .. CLUSTER .. '|' .. pool, added)
  table.insert(fields, 'pool')
  table.insert(fields, pool)
end
if usd then
  table.insert(fields, 'usd')
  table.insert(fields, tostring(usd))
end
emit('launched', unpack(fields))
return state
