-- Adopt handles the provider lists. KEYS[3] handles, KEYS[4] unknown, KEYS[5] desired,
-- KEYS[6] cleanup, KEYS[7] index, KEYS[8] counts; ARGV[4] '1' to set a lost desired number, then
-- handle, workers, status, pool, revision quintuples (pool '' for a cluster without pools). An adopted handle is live and tracked again, so it leaves the
-- cleanup hash (whose re-sent kills would kill it).
ensure_counts(KEYS[3], KEYS[7], KEYS[8])
local adopted = 0
for i = 5, #ARGV, 5 do
  local h = ARGV[i]
  redis.call('HDEL', KEYS[4], h)
  redis.call('HDEL', KEYS[6], h)
  if redis.call('HEXISTS', KEYS[3], h) == 0 then
    local w = tonumber(ARGV[i + 1])
    local r = {w = w, s = ARGV[i + 2], since = now, launch = 'adopted', kills = 0, b = now}
    if ARGV[i + 3] ~= '' then r.p = ARGV[i + 3] end
    if ARGV[i + 4] ~= '' then r.rev = ARGV[i + 4] end
    redis.call('HSET', KEYS[3], h, cjson.encode(r))
    move(KEYS[7], KEYS[8], h, r, nil, ARGV[i + 2])
    if r.p then batch('adopted', h, w, 'status', ARGV[i + 2], 'pool', r.p) else batch('adopted', h, w, 'status', ARGV[i + 2]) end
    adopted = adopted + w
  end
end
flush()
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[5], 'n') == 0 then
  local live = tonumber(redis.call('HGET', KEYS[8], 'initializing') or '0')
    + tonumber(redis.call('HGET', KEYS[8], 'running') or '0')
  redis.call('HINCRBY', KEYS[5], 'version', 1)
  redis.call('HSET', KEYS[5], 'n', live, 'at', now)
  emit('desired', 'n', tostring(live), 'source', 'adopted')
end
return adopted
