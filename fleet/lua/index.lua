-- The status index and the counts, kept beside a cluster's handle records by every script that
-- adds, moves or removes a handle (Python's transactions do the same: fleet/state/handles.py).
-- Their fields are fleet/grammar.py's (lua/prelude.lua: count_fields, index_value):
--   index:  handle -> status, or status@pool for a handle recorded under a pool (what the sweep
--           compares the provider's answer with, and which pool it asks)
--   counts: status, status:h, status@pool, int, r:<rev>, and v = 1 once built (what a reconcile reads)
-- ensure_counts() (re)builds both from the records when `v` is missing (an upgrade from a version
-- without them, or records written by hand); only it sets `v`, so counts that have `v` are whole.
-- read_record() reads a handle record as fleet.model.HandleRecord.decode does: the readable
-- names (workers, status, requested_at, kill_failed) stand for the stored ones (and are stored
-- under those when the script writes the record back), a record without a worker count has one
-- worker. nil for a record that is not a JSON object with a status: a script leaves it alone
-- rather than fail half-way (Redis does not undo what a failed script already wrote).
local READABLE = {workers = 'w', status = 's', requested_at = 'req', kill_failed = 'kfail', pool = 'p',
  interrupted = 'int', born = 'b', idle_since = 'idle', price = 'usd'}
local function read_record(raw)
  local ok, r = pcall(cjson.decode, raw)
  if not ok or type(r) ~= 'table' then return nil end
  for long, short in pairs(READABLE) do
    if r[long] ~= nil then
      if r[short] == nil then r[short] = r[long] end
      r[long] = nil
    end
  end
  if type(r.s) ~= 'string' then return nil end
  r.w = tonumber(r.w) or 1
  -- the fields that name something (pool, revision, cause) count only as non-empty strings, as
  -- HandleRecord.decode reads them: anything else is as if absent
  for _, name in ipairs({'p', 'rev', 'int'}) do
    if type(r[name]) ~= 'string' or r[name] == '' then r[name] = nil end
  end
  return r
end
-- Change the counts by the fields `came` minus the fields `gone` (count_fields pairs); a field
-- whose number does not change is not written.
local function recount(counts, gone, came)
  local delta, names = {}, {}
  local function add(fields, sign)
    for _, f in ipairs(fields) do
      if delta[f[1]] == nil then
        delta[f[1]] = 0
        table.insert(names, f[1])
      end
      delta[f[1]] = delta[f[1]] + sign * f[2]
    end
  end
  add(gone, -1)
  add(came, 1)
  for _, name in ipairs(names) do
    if delta[name] ~= 0 then redis.call('HINCRBY', counts, name, delta[name]) end
  end
end
local function ensure_counts(handles, index, counts)
  if redis.call('HEXISTS', counts, 'v') == 1 then return end
  redis.call('DEL', index, counts)
  local all = redis.call('HGETALL', handles)
  for i = 1, #all, 2 do
    local r = read_record(all[i + 1])
    -- a record no script can read is left out of the counts (and so of any plan), not fatal
    if r then
      redis.call('HSET', index, all[i], index_value(r, r.s))
      recount(counts, {}, count_fields(r, r.s))
    end
  end
  redis.call('HSET', counts, 'v', 1)
end
-- The cost of what runs (fleet.state.costs). COST is the cluster's cost hash: a script that adds
-- or removes handles sets it (to one of its KEYS) before it moves any, and rewrite() keeps there
--   rate@<pool>    micro-USD per hour of the handles in Redis (every status counts: they all run)
--   held@<pool>    the sum of price x born / 3600 of those handles (USD): what they cost so far
--                  is rate x now / 3600 - held (reset to 0 whenever the rate comes back to 0)
--   spent@<pool>   USD of the handles that left Redis: price x (confirmed stop - recorded)
--   <hour>@<pool>  the same USD by the hour (Unix time / 3600) it was spent in, for the last
--                  COST_HOURS hours of a handle's life (what `fleet cost --since` reads)
-- A record's price is `usd` (USD per hour of the handle); a record without one, or with anything
-- but a number from 0 to 1e6 there, costs 0. LEFT_COST is the cost the last leaving handle added.
local COST, COST_HOURS, LEFT_COST = nil, 168, 0
local function price(r)
  local p = tonumber(r.usd)
  if p and p > 0 and p < 1e6 then return p end
  return 0
end
local function costed(r, old, new)
  LEFT_COST = 0
  if not COST or (old and new) or (not old and not new) then return end
  local usd = price(r)
  if usd == 0 then return end
  local pool = r.p or ''
  local micro = math.floor(usd * 1e6 + 0.5)
  local born = tonumber(r.b) or now
  if new then
    redis.call('HINCRBY', COST, 'rate@' .. pool, micro)
    redis.call('HINCRBYFLOAT', COST, 'held@' .. pool, tostring(usd * born / 3600))
    return
  end
  if redis.call('HINCRBY', COST, 'rate@' .. pool, -micro) == 0 then
    redis.call('HSET', COST, 'held@' .. pool, 0)  -- no float dust left behind
  else
    redis.call('HINCRBYFLOAT', COST, 'held@' .. pool, tostring(-usd * born / 3600))
  end
  if born > now then born = now end
  LEFT_COST = usd * (now - born) / 3600
  redis.call('HINCRBYFLOAT', COST, 'spent@' .. pool, tostring(LEFT_COST))
  local from = math.max(born, now - COST_HOURS * 3600)
  local hour = math.floor(from / 3600)
  while hour * 3600 < now do
    local a, b = math.max(from, hour * 3600), math.min(now, (hour + 1) * 3600)
    if b > a then redis.call('HINCRBYFLOAT', COST, hour .. '@' .. pool, tostring(usd * (b - a) / 3600)) end
    hour = hour + 1
  end
end
-- Handle h changes: it made the counts `before` (count_fields of its old record in status `old`;
-- nil: it enters) and is now record r in status `new` (nil: it leaves). The index and the counts
-- follow. A move TRANSITIONS does not allow is refused: false, and nothing written (the caller
-- writes the record only on true).
local function rewrite(index, counts, h, before, old, r, new)
  if not may_move(h, old, new) then return false end
  costed(r, old, new)
  recount(counts, before, count_fields(r, new))
  if new and new ~= old then
    redis.call('HSET', index, h, index_value(r, new))
  elseif not new then
    redis.call('HDEL', index, h)
  end
  return true
end
-- Move handle h (its record r) from status `old` (nil: it enters) to `new` (nil: it leaves), as
-- rewrite() does. An interrupted handle counts in `int` until it leaves.
local function move(index, counts, h, r, old, new)
  return rewrite(index, counts, h, count_fields(r, old), old, r, new)
end
