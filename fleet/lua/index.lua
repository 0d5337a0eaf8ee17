-- The status index and the counts, kept beside a cluster's handle records by every script that
-- adds, moves or removes a handle (Python's transactions do the same: fleet/store.py):
--   index:  handle -> status, or status@pool for a handle recorded under a pool (what the sweep
--           compares the provider's answer with, and which pool it asks)
--   counts: status -> workers, status:h -> handles, status@pool -> workers of the handles recorded
--           under a pool (field p), int -> workers of the handles the cloud reclaims (field int),
--           r:<rev> -> workers of the live handles launched from revision rev (field rev),
--           and v = 1 once built (what a reconcile reads)
-- ensure_counts() (re)builds both from the records when `v` is missing (an upgrade from a version
-- without them, or records written by hand); only it sets `v`, so counts that have `v` are whole.
-- read_record() reads a handle record as fleet.model.HandleRecord.decode does: the readable
-- names (workers, status, requested_at, kill_failed) stand for the stored ones (and are stored
-- under those when the script writes the record back), a record without a worker count has one
-- worker. nil for a record that is not a JSON object with a status: a script leaves it alone
-- rather than fail half-way (Redis does not undo what a failed script already wrote).
local READABLE = {workers = 'w', status = 's', requested_at = 'req', kill_failed = 'kfail', pool = 'p',
  interrupted = 'int', born = 'b', idle_since = 'idle'}
local LIVE = {initializing = true, running = true}
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
local function ensure_counts(handles, index, counts)
  if redis.call('HEXISTS', counts, 'v') == 1 then return end
  redis.call('DEL', index, counts)
  local all = redis.call('HGETALL', handles)
  for i = 1, #all, 2 do
    local r = read_record(all[i + 1])
    -- a record no script can read is left out of the counts (and so of any plan), not fatal
    if r then
      if r.p and r.p ~= '' then redis.call('HSET', index, all[i], r.s .. '@' .. r.p)
      else redis.call('HSET', index, all[i], r.s) end
      redis.call('HINCRBY', counts, r.s, r.w)
      redis.call('HINCRBY', counts, r.s .. ':h', 1)
      if r.p and r.p ~= '' then redis.call('HINCRBY', counts, r.s .. '@' .. r.p, r.w) end
      if r.int and r.int ~= '' then redis.call('HINCRBY', counts, 'int', r.w) end
      if r.rev and r.rev ~= '' and LIVE[r.s] then redis.call('HINCRBY', counts, 'r:' .. r.rev, r.w) end
    end
  end
  redis.call('HSET', counts, 'v', 1)
end
-- Move handle h (its record r: r.w workers, r.p its pool, r.int set if interrupted) from status
-- `old` (nil: it enters) to `new` (nil: it leaves). An interrupted handle counts in `int` until
-- it leaves; a script that marks one interrupted adds it there itself (see interrupt.lua).
local function move(index, counts, h, r, old, new)
  local pooled = r.p and r.p ~= ''
  if r.rev and r.rev ~= '' then  -- live workers by revision: what a rollout replaces
    local was, is = old and LIVE[old], new and LIVE[new]
    if was and not is then redis.call('HINCRBY', counts, 'r:' .. r.rev, -r.w) end
    if is and not was then redis.call('HINCRBY', counts, 'r:' .. r.rev, r.w) end
  end
  if old then
    redis.call('HINCRBY', counts, old, -r.w)
    redis.call('HINCRBY', counts, old .. ':h', -1)
    if pooled then redis.call('HINCRBY', counts, old .. '@' .. r.p, -r.w) end
  end
  if new then
    if pooled then redis.call('HSET', index, h, new .. '@' .. r.p) else redis.call('HSET', index, h, new) end
    redis.call('HINCRBY', counts, new, r.w)
    redis.call('HINCRBY', counts, new .. ':h', 1)
    if pooled then redis.call('HINCRBY', counts, new .. '@' .. r.p, r.w) end
  else
    redis.call('HDEL', index, h)
    if r.int and r.int ~= '' then redis.call('HINCRBY', counts, 'int', -r.w) end
  end
end
