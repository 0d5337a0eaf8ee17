-- Mark live handles older than max_lifetime as outdated: their revision becomes `expired`, so a
-- rollout replaces them as it replaces workers of an older spec (surge, drain, no job lost).
-- KEYS[3] handles, KEYS[4] index, KEYS[5] counts; ARGV[4..] the handles. A handle already
-- expired, or not live, is left alone. Returns the handles marked; one event for them all.
ensure_counts(KEYS[3], KEYS[4], KEYS[5])
local marked = {}
for i = 4, #ARGV do
  local h = ARGV[i]
  local raw = redis.call('HGET', KEYS[3], h)
  local r = raw and read_record(raw)
  if r and LIVE[r.s] and r.rev ~= 'expired' and not r.int then
    -- out of the live workers of its revision (if it had one), into those of `expired`
    local old = r.rev
    r.rev = 'expired'
    local encoded = cjson.encode(r)
    if old then redis.call('HINCRBY', KEYS[5], 'r:' .. old, -r.w) end
    redis.call('HINCRBY', KEYS[5], 'r:expired', r.w)
    redis.call('HSET', KEYS[3], h, encoded)
    batch('expired', h, r.w)
    table.insert(marked, h)
  end
end
flush()
return marked
