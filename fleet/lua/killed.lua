-- Count kill attempts. KEYS[3] handles, KEYS[4] cleanup; ARGV[4] first cleanup retry (s), then
-- handle, ok pairs.
local retry = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  local h, ok = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  local c = redis.call('HGET', KEYS[4], h)
  if raw then
    local r = cjson.decode(raw)
    r.kills = (r.kills or 0) + 1
    r.kill_at = now
    if ok ~= '1' then
      emit('kill_failed', 'handle', h, 'attempt', tostring(r.kills))
      r.kfail = 1
    else
      r.kfail = nil
    end
    redis.call('HSET', KEYS[3], h, cjson.encode(r))
  elseif ok ~= '1' and not c then
    -- it left Redis (seen stopped) while this kill was queued: its remains are cleaned up as a
    -- dead handle's are, or nothing would ever kill them again
    redis.call('HSET', KEYS[4], h, cjson.encode({w = 0, tries = 0, next = now + retry}))
    emit('kill_failed', 'handle', h, 'attempt', '1')
  end
  if ok == '1' and c then
    redis.call('HDEL', KEYS[4], h)
    local tries = cjson.decode(c).tries
    if tries > 0 then emit('cleaned_up', 'handle', h, 'tries', tostring(tries)) end
  end
end
return 0
