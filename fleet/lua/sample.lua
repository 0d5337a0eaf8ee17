-- One sample of a cluster's workers for the console's chart (fleet.state.events Events.sample).
-- Several processes sweep: a sample younger than the spacing means this one is not due.
-- KEYS:
--   KEYS[1] series_key   the cluster's series (newest first: "<time> <running> <desired or ->")
--   KEYS[2] counts_key   the counts (lua/index.lua)
--   KEYS[3] desired_key  the cluster's desired number
-- ARGV:
--   ARGV[1] now          the time (Redis time, Unix seconds)
--   ARGV[2] every        the least seconds between two samples
--   ARGV[3] keep         samples kept
-- Returns 1 if this call added a sample, else 0.
local series_key, counts_key, desired_key = KEYS[1], KEYS[2], KEYS[3]
local now, every, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('LINDEX', series_key, 0)
if last and now - tonumber(string.match(last, '^%S+')) < every then return 0 end
local running = redis.call('HGET', counts_key, 'running') or '0'
local desired = redis.call('HGET', desired_key, 'n') or '-'
redis.call('LPUSH', series_key, string.format('%.3f %s %s', now, running, desired))
redis.call('LTRIM', series_key, 0, keep - 1)
return 1
