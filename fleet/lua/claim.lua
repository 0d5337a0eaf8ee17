-- Take a pending launch for a run task (fleet.state.launches Launches.claim_launch).
-- A launch cancelled before any run task took it is dropped ('cancelled'). One cancelled after a
-- run task took it may have made workers (its answer lost, the task retried or died): 'settle',
-- and the run task asks the provider what the launch made and kills that before the entry goes.
-- KEYS:
--   KEYS[1] pending_key  the cluster's pending launches
-- ARGV:
--   ARGV[1] launch_id    the launch
--   ARGV[2] now          the time (Redis time, Unix seconds)
--   ARGV[3] per_handle   workers per handle (the launch's `count` is in workers)
--   ARGV[4..]            pool, usd pairs: what one handle of each pool costs per hour ('' for
--                        a cluster without pools; a pool left out has no known price)
-- A claimed launch is in flight: it records `usd` and its run `rate` (usd x its handles), which
-- count in the cluster's run rate until its handles are recorded (fleet.state.costs).
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
local per, usd = tonumber(ARGV[3]) or 1, nil
for i = 4, #ARGV, 2 do
  if ARGV[i] == (p.pool or '') then usd = tonumber(ARGV[i + 1]) end
end
if usd and usd >= 0 and usd < 1e6 and per >= 1 then
  p.usd = usd
  p.rate = usd * math.ceil(tonumber(p.count) / per)
end
redis.call('HSET', pending_key, launch_id, cjson.encode(p))
return {'claimed', p.count, first, p.pool or '', p.rev or ''}
