-- Count kill attempts (fleet.state.sweeps Sweeps.record_kills); one event per kind for the whole call.
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] cleanup_key  dead handles whose remains wait for a kill
-- ARGV (after the prelude's three):
--   ARGV[4] retry        the first cleanup retry (seconds)
--   ARGV[5] pool         the pool the kills were for ('' for none)
--   ARGV[6..]            handle, ok ('1' or '0') pairs
-- Returns 0.
local handles_key, cleanup_key = KEYS[3], KEYS[4]
local retry, pool = tonumber(ARGV[4]), ARGV[5]
for i = 6, #ARGV, 2 do
  local h, ok = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', handles_key, h)
  local c = redis.call('HGET', cleanup_key, h)
  local r = raw and read_record(raw)
  if r then
    r.kills = (r.kills or 0) + 1
    r.kill_at = now
    if ok ~= '1' then
      batch('kill_failed', h, r.w, 'attempt', tostring(r.kills))
      r.kfail = 1
    else
      r.kfail = nil
    end
    redis.call('HSET', handles_key, h, cjson.encode(r))
  elseif not raw and ok ~= '1' and not c then
    -- it left Redis (seen stopped) while this kill was queued: its remains are cleaned up as a
    -- dead handle's are, or nothing would ever kill them again
    local entry = {w = 0, tries = 0, next = now + retry}
    if pool ~= '' then entry.p = pool end
    redis.call('HSET', cleanup_key, h, cjson.encode(entry))
    batch('kill_failed', h, 0, 'attempt', '1')
  end
  if ok == '1' and c then
    redis.call('HDEL', cleanup_key, h)
    local tries = cjson.decode(c).tries
    if tries > 0 then batch('cleaned_up', h, 0, 'tries', tostring(tries)) end
  end
end
flush()
return 0
