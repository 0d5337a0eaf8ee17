-- The cluster's counts, built first if need be (fleet.state.handles Handles.rebuild_counts).
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] index_key    the status index (lua/index.lua)
--   KEYS[5] counts_key   the counts (lua/index.lua)
-- ARGV: the prelude's three only.
-- Returns the counts (HGETALL).
local handles_key, index_key, counts_key = KEYS[3], KEYS[4], KEYS[5]
ensure_counts(handles_key, index_key, counts_key)
return redis.call('HGETALL', counts_key)
