-- Store a desired number. KEYS[3] desired, KEYS[4] the "reconcile queued" marker; ARGV[4] n,
-- ARGV[5] the autoscaler's floor ('' to leave it), ARGV[6] the source, ARGV[7] the marker's
-- lifetime in seconds ('' to leave it alone). One round trip for what a request changes.
-- Returns {the new version (it only grows), 1 if this call set the marker}.
local version = redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('HSET', KEYS[3], 'n', ARGV[4], 'at', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'floor', ARGV[5]) end
emit('desired', 'n', ARGV[4], 'source', ARGV[6])
local flagged = 0
if ARGV[7] ~= '' and redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[7]) then flagged = 1 end
return {version, flagged}
