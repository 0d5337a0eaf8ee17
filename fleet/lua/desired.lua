-- Store a desired number (fleet.state.markers Markers.set_desired): one round trip for what a
-- request changes.
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] desired_key  the cluster's desired number
--   KEYS[4] queued_key   the "reconcile queued" marker
-- ARGV (after the prelude's three):
--   ARGV[4] n            the desired number
--   ARGV[5] floor        the autoscaler's floor ('' to leave it)
--   ARGV[6] source       who asked (the event's `source`)
--   ARGV[7] queued_ttl   the marker's lifetime in seconds ('' to leave the marker alone)
-- Returns {the new version (it only grows), 1 if this call set the marker}.
local desired_key, queued_key = KEYS[3], KEYS[4]
local n, floor, source, queued_ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local at = ARGV[3]  -- the prelude's time, stored as it was sent
local version = redis.call('HINCRBY', desired_key, 'version', 1)
redis.call('HSET', desired_key, 'n', n, 'at', at)
if floor ~= '' then redis.call('HSET', desired_key, 'floor', floor) end
emit('desired', 'n', n, 'source', source)
local flagged = 0
if queued_ttl ~= '' and redis.call('SET', queued_key, '1', 'NX', 'EX', queued_ttl) then flagged = 1 end
return {version, flagged}
