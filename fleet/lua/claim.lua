-- Take a pending launch for a run task (fleet.state.launches Launches.claim_launch), and admit it
-- under the hourly caps that cover its cluster (fleet.budget), in one step: two run tasks, of one
-- cluster or of two clusters under one cap, can never both pass the cap.
-- A launch cancelled before any run task took it is dropped ('cancelled'). One cancelled after a
-- run task took it may have made workers (its answer lost, the task retried or died): 'settle',
-- and the run task asks the provider what the launch made and kills that before the entry goes.
-- KEYS:
--   KEYS[1] pending_key       the cluster's pending launches
--   KEYS[2i], KEYS[2i+1]      the `cost` hash and pending launches of the i-th cluster some cap
--                             covers (i = 1..), this cluster's among them
-- ARGV:
--   ARGV[1] launch_id    the launch
--   ARGV[2] now          the time (Redis time, Unix seconds)
--   ARGV[3] per_handle   workers per handle (the launch's `count` is in workers)
--   ARGV[4] caps         JSON list of {name, cap (micro-USD/h), clusters (the i above)}; '' for none
--   ARGV[5..]            pool, usd pairs: what one handle of each pool costs per hour ('' for
--                        a cluster without pools; a pool left out has no known price)
-- A claimed launch is in flight: it records `usd` and its run `rate` (usd x its handles), which
-- count in the cluster's run rate until its handles are recorded (fleet.state.costs).
-- Admission (first claim only, a priced launch only): the committed run rate of a cap's clusters
-- (their `rate@<pool>` fields plus their claimed launches' `rate`) plus this launch's must not
-- pass the cap. A launch that does not fit is cut to the handles that fit (its `count` shrinks;
-- the reply says what it asked); one that no handle of fits is dropped ('at_budget').
-- Returns {state, count, first, pool, rev, cap name, committed micro-USD/h (with this launch), cap
-- micro-USD/h, asked}; the cap's name is '' when no cap cut the launch.
local pending_key = KEYS[1]
local launch_id, now, caps_json = ARGV[1], tonumber(ARGV[2]), ARGV[4] or ''
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
local per, usd = tonumber(ARGV[3]) or 1, nil
for i = 5, #ARGV, 2 do
  if ARGV[i] == (p.pool or '') then usd = tonumber(ARGV[i + 1]) end
end
if not (usd and usd >= 0 and usd < 1e6 and per >= 1) then usd = nil end

-- the committed run rate of cluster i (micro-USD/h), read once
local rates = {}
local function rate_of(i)
  if rates[i] then return rates[i] end
  local sum = 0
  local cost = redis.call('HGETALL', KEYS[2 * i])
  for j = 1, #cost, 2 do
    if string.sub(cost[j], 1, 5) == 'rate@' then sum = sum + (tonumber(cost[j + 1]) or 0) end
  end
  local pending = redis.call('HVALS', KEYS[2 * i + 1])
  for j = 1, #pending do
    local ok, l = pcall(cjson.decode, pending[j])
    if ok and type(l) == 'table' and l.claimed and tonumber(l.rate) then
      sum = sum + math.floor(tonumber(l.rate) * 1e6 + 0.5)
    end
  end
  rates[i] = sum
  return sum
end

local asked = tonumber(p.count)
local handles = math.ceil(asked / per)
local price = usd and math.floor(usd * 1e6 + 0.5) or 0
local tight, tight_rate, tight_cap, fit = '', 0, 0, handles
if first == 1 and price > 0 and caps_json ~= '' then
  for _, cap in ipairs(cjson.decode(caps_json)) do
    local committed = 0
    for _, i in ipairs(cap.clusters) do committed = committed + rate_of(i) end
    local room = math.floor((tonumber(cap.cap) - committed) / price)
    if room < 0 then room = 0 end
    if room < fit then
      fit, tight, tight_rate, tight_cap = room, cap.name, committed, tonumber(cap.cap)
    end
  end
end
if fit <= 0 and handles > 0 and tight ~= '' then
  redis.call('HDEL', pending_key, launch_id)
  return {'at_budget', 0, first, p.pool or '', p.rev or '', tight, tight_rate, tight_cap, asked}
end
if fit < handles then
  p.count = math.min(asked, fit * per)
end
p.state = 'running'
p.claimed = now
if usd then
  p.usd = usd
  p.rate = usd * math.ceil(tonumber(p.count) / per)
end
redis.call('HSET', pending_key, launch_id, cjson.encode(p))
return {'claimed', p.count, first, p.pool or '', p.rev or '', tight, tight_rate + fit * price, tight_cap, asked}
