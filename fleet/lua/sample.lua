-- One sample of a cluster's workers for the console's chart: KEYS[1] series, KEYS[2] counts,
-- KEYS[3] desired; ARGV[1] now, ARGV[2] the least seconds between samples, ARGV[3] samples kept.
-- Several processes sweep: a sample younger than the spacing means this one is not due.
local now, every, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('LINDEX', KEYS[1], 0)
if last and now - tonumber(string.match(last, '^%S+')) < every then return 0 end
local running = redis.call('HGET', KEYS[2], 'running') or '0'
local desired = redis.call('HGET', KEYS[3], 'n') or '-'
redis.call('LPUSH', KEYS[1], string.format('%.3f %s %s', now, running, desired))
redis.call('LTRIM', KEYS[1], 0, keep - 1)
return 1
