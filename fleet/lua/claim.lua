-- Take a pending launch for a run task. KEYS[1] pending; ARGV[1] launch id, ARGV[2] the time.
-- Returns {state, count, first, pool, rev}: first = 1 when no run task had taken it before.
-- A launch cancelled before any run task took it is dropped ('cancelled'). One cancelled after a
-- run task took it may have made workers (its answer lost, the task retried or died): 'settle',
-- and the run task asks the provider what the launch made and kills that before the entry goes.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', 0, 0, '', ''} end
local p = cjson.decode(raw)
if p.state == 'cancelled' then
  if p.claimed then
    p.claimed = tonumber(ARGV[2])  -- the sweep re-sends it launch_timeout after this attempt
    redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
    return {'settle', p.count, 0, p.pool or '', p.rev or ''}
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {'cancelled', 0, 0, '', ''}
end
local first = 0
if not p.claimed then first = 1 end
p.state = 'running'
p.claimed = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return {'claimed', p.count, first, p.pool or '', p.rev or ''}
