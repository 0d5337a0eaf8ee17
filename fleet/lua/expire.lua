-- Mark live handles older than max_lifetime as outdated (fleet.state.rollouts Rollouts.expire):
-- their revision becomes `expired`, so a rollout replaces them as it replaces workers of an older
-- spec (surge, drain, no job lost). A handle already expired, interrupted or not live is left
-- alone. One event for them all.
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] index_key    the status index (lua/index.lua)
--   KEYS[5] counts_key   the counts (lua/index.lua)
-- ARGV (after the prelude's three):
--   ARGV[4..]            the handles
-- Returns the handles marked.
local handles_key, index_key, counts_key = KEYS[3], KEYS[4], KEYS[5]
ensure_counts(handles_key, index_key, counts_key)
local marked = {}
for i = 4, #ARGV do
  local h = ARGV[i]
  local raw = redis.call('HGET', handles_key, h)
  local r = raw and read_record(raw)
  if r and LIVE[r.s] and r.rev ~= 'expired' and not r.int then
    -- out of the live workers of its revision (if it had one), into those of `expired`
    local before = count_fields(r, r.s)
    r.rev = 'expired'
    local encoded = cjson.encode(r)
    rewrite(index_key, counts_key, h, before, r.s, r, r.s)
    redis.call('HSET', handles_key, h, encoded)
    batch('expired', h, r.w)
    table.insert(marked, h)
  end
end
flush()
return marked
