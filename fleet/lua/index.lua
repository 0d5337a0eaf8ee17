-- The status index and the counts, kept beside a cluster's handle records by every script that
-- adds, moves or removes a handle (Python's transactions do the same: fleet/store.py):
--   index:  handle -> status            (what the sweep compares the provider's answer with)
--   counts: status -> workers, status:h -> handles, and v = 1 once built (what a reconcile reads)
-- ensure_counts() (re)builds both from the records when `v` is missing (an upgrade from a version
-- without them, or records written by hand); only it sets `v`, so counts that have `v` are whole.
-- read_record() reads a handle record as fleet.model.HandleRecord.decode does: the readable
-- names (workers, status, requested_at, kill_failed) stand for the stored ones (and are stored
-- under those when the script writes the record back), a record without a worker count has one
-- worker. nil for a record that is not a JSON object with a status: a script leaves it alone
-- rather than fail half-way (Redis does not undo what a failed script already wrote).
local READABLE = {workers = 'w', status = 's', requested_at = 'req', kill_failed = 'kfail'}
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
  return r
end
local function ensure_counts(handles, index, counts)
  if redis.call('HEXISTS', counts, 'v') == 1 then return end
  redis.call('DEL', index, counts)
  local all = redis.call('HGETALL', handles)
  for i = 1, #all, 2 do
    local r = read_record(all[i + 1])
    -- a record no script can read is left out of the counts (and so of any plan), not fatal
    if r then
      redis.call('HSET', index, all[i], r.s)
      redis.call('HINCRBY', counts, r.s, r.w)
      redis.call('HINCRBY', counts, r.s .. ':h', 1)
    end
  end
  redis.call('HSET', counts, 'v', 1)
end
local function move(index, counts, h, w, old, new)
  if old then
    redis.call('HINCRBY', counts, old, -w)
    redis.call('HINCRBY', counts, old .. ':h', -1)
  end
  if new then
    redis.call('HSET', index, h, new)
    redis.call('HINCRBY', counts, new, w)
    redis.call('HINCRBY', counts, new .. ':h', 1)
  else
    redis.call('HDEL', index, h)
  end
end
