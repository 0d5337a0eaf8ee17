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
  if r and LIVE[r.s] and r.rev ~= 'expired' then
    -- out of the live workers of its revision (if it had one), into those of `expired`
    move(KEYS[4], KEYS[5], h, r, r.s, nil)
    r.rev = 'expired'
    move(KEYS[4], KEYS[5], h, r, nil, r.s)
    redis.call('HSET', KEYS[3], h, cjson.encode(r))
    batch('expired', h, r.w)
    table.insert(marked, h)
  end
end
flush()
return marked
