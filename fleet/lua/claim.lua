-- Take a pending launch for a run task (fleet.state.launches Launches.claim_launch).
-- A launch cancelled before any run task took it is dropped ('cancelled'). One cancelled after a
-- run task took it may have made workers (its answer lost, the task retried or died): 'settle',
-- and the run task asks the provider what the launch made and kills that before the entry goes.
-- KEYS:
--   KEYS[1] pending_key  the cluster's pending launches
-- ARGV:
--   ARGV[1] launch_id    the launch
--   ARGV[2] now          the time (Redis time, Unix seconds)
-- Returns {state, count, first, pool, rev}: first = 1 when no run task had taken it before.
local pending_key = KEYS[1]
local launch_id, now = ARGV[1], tonumber(ARGV[2])
local raw = redis.call('HGET', pending_key, launch_id)
if not raw then return {'missing', 0, 0, '', ''} end
local p = cjson.decode(raw)
if p.state == 'cancelled' then
  if p.claimed then
    p.claimed = now  -- the sweep re-sends it launch_timeout after this attempt
    redis.call('HSET', pending_key, launch_id, cjson.encode(p))
    return {'settle', p.count, 0, p.pool or '', p.rev or ''}
  end
  redis.call('HDEL', pending_key, launch_id)
  return {'cancelled', 0, 0, '', ''}
end
local first = 0
if not p.claimed then first = 1 end
p.state = 'running'
p.claimed = now
redis.call('HSET', pending_key, launch_id, cjson.encode(p))
return {'claimed', p.count, first, p.pool or '', p.rev or ''}
