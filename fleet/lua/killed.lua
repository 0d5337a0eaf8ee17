-- Count kill attempts. KEYS[3] handles, KEYS[4] cleanup; ARGV[4] first cleanup retry (s), ARGV[5]
-- the pool the kill was for, then handle, ok pairs. One event per kind for the whole call.
local retry = tonumber(ARGV[4])
for i = 6, #ARGV, 2 do
  local h, ok = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  local c = redis.call('HGET', KEYS[4], h)
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
    redis.call('HSET', KEYS[3], h, cjson.encode(r))
  elseif not raw and ok ~= '1' and not c then
    -- it left Redis (seen stopped) while this kill was queued: its remains are cleaned up as a
    -- dead handle's are, or nothing would ever kill them again
    local entry = {w = 0, tries = 0, next = now + retry}
    if ARGV[5] ~= '' then entry.p = ARGV[5] end
    redis.call('HSET', KEYS[4], h, cjson.encode(entry))
    batch('kill_failed', h, 0, 'attempt', '1')
  end
  if ok == '1' and c then
    redis.call('HDEL', KEYS[4], h)
    local tries = cjson.decode(c).tries
    if tries > 0 then batch('cleaned_up', h, 0, 'tries', tostring(tries)) end
  end
end
flush()
return 0
