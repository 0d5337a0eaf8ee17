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
  interrupted = 'int', born = 'b', idle_since = 'idle'}
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
-- Handle h changes: it made the counts `before` (count_fields of its old record in status `old`;
-- nil: it enters) and is now record r in status `new` (nil: it leaves). The index and the counts
-- follow. A move TRANSITIONS does not allow is refused: false, and nothing written (the caller
-- writes the record only on true).
local function rewrite(index, counts, h, before, old, r, new)
  if not may_move(h, old, new) then return false end
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
