-- A control plane admits one public request before it applies it (fleet.requests).
-- KEYS:
--   KEYS[1] request_key  the request's key (fleet:<id>:request:<task id>)
-- ARGV:
--   ARGV[1] deadline     its deadline (Redis time, seconds)
--   ARGV[2] keep         seconds its fate is kept past the deadline
--   ARGV[3] ahead        the furthest ahead of Redis time a deadline may be
-- Returns {fate, Redis time now}: 'applying' (taken now: apply it), 'taken' (taken before: a
-- redelivery, apply it again), 'expired' (past its deadline: recorded now, refuse it), what was
-- recorded before ('expired', 'abandoned': its sender gave up; refuse it), or 'invalid' (a
-- deadline too far ahead: nothing written).
local request_key = KEYS[1]
local deadline, keep, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fate = redis.call('GET', request_key)
if fate == 'applying' then
  return {'taken', tostring(now)}
end
if fate then
  return {fate, tostring(now)}
end
if deadline > now + ahead then
  return {'invalid', tostring(now)}
end
if now > deadline then
  fate = 'expired'
else
  fate = 'applying'
end
-- kept until at least deadline + keep: the sender may give up until then (lua/abandon.lua)
redis.call('SET', request_key, fate, 'EX', math.max(math.ceil(deadline - now), 0) + keep)
return {fate, tostring(now)}
