-- Adopt handles the provider lists (fleet.state.sweeps Sweeps.adopt). An adopted handle is live
-- and tracked again, so it leaves the cleanup hash (whose re-sent kills would kill it). A handle
-- whose status TRANSITIONS does not let enter is refused: left as it was, in the unknown hash.
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] unknown_key  handles the provider lists that Redis does not know
--   KEYS[5] desired_key  the cluster's desired number
--   KEYS[6] cleanup_key  dead handles whose remains wait for a kill
--   KEYS[7] index_key    the status index (lua/index.lua)
--   KEYS[8] counts_key   the counts (lua/index.lua)
-- ARGV (after the prelude's three):
--   ARGV[4] set_desired  '1' to set a lost desired number to the cluster's live workers
--   ARGV[5..]            handle, workers, status, pool, revision quintuples ('' for none)
-- Returns the workers adopted.
local handles_key, unknown_key, desired_key = KEYS[3], KEYS[4], KEYS[5]
local cleanup_key, index_key, counts_key = KEYS[6], KEYS[7], KEYS[8]
local set_desired = ARGV[4]
ensure_counts(handles_key, index_key, counts_key)
local function tracked(h)  -- no longer unknown, nor dead
  redis.call('HDEL', unknown_key, h)
  redis.call('HDEL', cleanup_key, h)
end
local adopted = 0
for i = 5, #ARGV, 5 do
  local h, w, status, pool, rev = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('HEXISTS', handles_key, h) == 1 then
    tracked(h)
  else
    local r = {w = w, s = status, since = now, launch = 'adopted', kills = 0, b = now}
    if pool ~= '' then r.p = pool end
    if rev ~= '' then r.rev = rev end
    if move(index_key, counts_key, h, r, nil, status) then
      tracked(h)
      redis.call('HSET', handles_key, h, cjson.encode(r))
      if r.p then batch('adopted', h, w, 'status', status, 'pool', r.p) else batch('adopted', h, w, 'status', status) end
      adopted = adopted + w
    end
  end
end
flush()
if set_desired == '1' and redis.call('HEXISTS', desired_key, 'n') == 0 then
  local live = 0
  for s in pairs(LIVE) do live = live + tonumber(redis.call('HGET', counts_key, s) or '0') end
  redis.call('HINCRBY', desired_key, 'version', 1)
  redis.call('HSET', desired_key, 'n', live, 'at', now)
  emit('desired', 'n', tostring(live), 'source', 'adopted')
end
return adopted
