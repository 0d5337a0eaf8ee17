-- The sender of a public request gives up waiting for its answer (fleet.requests).
-- KEYS[1]: the request's key; ARGV[1]: its deadline (Redis time, seconds); ARGV[2]: seconds a
-- control plane keeps a request's fate past its deadline (lua/admit.lua)
-- Returns the request's fate: 'abandoned' (recorded now: no control plane had taken it, and
-- lua/admit.lua refuses it from now on), what a control plane recorded ('applying': taken, it may
-- be applied; 'expired': refused), or 'unknown' (so late that a fate recorded may have lapsed).
local fate = redis.call('GET', KEYS[1])
if fate then
  return fate
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
if now > deadline + keep - 1 then
  return 'unknown'
end
redis.call('SET', KEYS[1], 'abandoned', 'EX', math.max(math.ceil(deadline - now), 0) + keep)
return 'abandoned'
