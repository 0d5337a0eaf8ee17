-- A control plane admits one public request before it applies it (fleet.requests).
-- KEYS[1]: the request's key (fleet:<id>:request:<task id>)
-- ARGV[1]: its deadline (Redis time, seconds); ARGV[2]: seconds its fate is kept past the deadline;
-- ARGV[3]: the furthest ahead of Redis time a deadline may be
-- Returns {fate, Redis time now}: 'applying' (taken now: apply it), 'taken' (taken before: a
-- redelivery, apply it again), 'expired' (past its deadline: recorded now, refuse it), what was
-- recorded before ('expired', 'abandoned': its sender gave up; refuse it), or 'invalid' (a
-- deadline too far ahead: nothing written).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fate = redis.call('GET', KEYS[1])
if fate == 'applying' then
  return {'taken', tostring(now)}
end
if fate then
  return {fate, tostring(now)}
end
local deadline = tonumber(ARGV[1])
if deadline > now + tonumber(ARGV[3]) then
  return {'invalid', tostring(now)}
end
if now > deadline then
  fate = 'expired'
else
  fate = 'applying'
end
-- kept until at least deadline + ARGV[2]: the sender may give up until then (lua/abandon.lua)
redis.call('SET', KEYS[1], fate, 'EX', math.max(math.ceil(deadline - now), 0) + tonumber(ARGV[2]))
return {fate, tostring(now)}
