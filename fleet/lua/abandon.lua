-- The sender of a public request gives up waiting for its answer (fleet.requests).
-- KEYS:
--   KEYS[1] request_key  the request's key (fleet:<id>:request:<task id>)
-- ARGV:
--   ARGV[1] deadline     its deadline (Redis time, seconds)
--   ARGV[2] keep         seconds a control plane keeps a request's fate past its deadline (lua/admit.lua)
-- Returns the request's fate: 'abandoned' (recorded now: no control plane had taken it, and
-- lua/admit.lua refuses it from now on), what a control plane recorded ('applying': taken, it may
-- be applied; 'expired': refused), or 'unknown' (so late that a fate recorded may have lapsed).
local request_key = KEYS[1]
local deadline, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local fate = redis.call('GET', request_key)
if fate then
  return fate
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if now > deadline + keep - 1 then
  return 'unknown'
end
redis.call('SET', request_key, 'abandoned', 'EX', math.max(math.ceil(deadline - now), 0) + keep)
return 'abandoned'
