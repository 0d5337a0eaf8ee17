-- Mark handles the cloud reclaims (or reclaimed) as interrupted (fleet.state.sweeps Sweeps.interrupt).
-- An initializing or running handle moves to draining until its deadline: it stops counting as
-- live, so the next reconcile launches its replacement, and the sweep kills it once it holds no
-- task and the replacement is launched, or at the deadline. A draining one only gains the mark.
-- A stopping one is left alone (Fleet kills it anyway). Marking twice changes nothing: a notice
-- received again after a crash is harmless. Each interrupted handle counts in `int` until it
-- leaves (lua/index.lua), which is what lets a reconcile launch its replacement above
-- max_workers; the notice time waits in notice_key for the next handle that runs (the replacement).
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] handles_key  the cluster's handle records
--   KEYS[4] index_key    the status index (lua/index.lua)
--   KEYS[5] counts_key   the counts (lua/index.lua)
--   KEYS[6] notice_key   handle -> when its interruption was noticed (lua/status.lua reads it)
-- ARGV (after the prelude's three):
--   ARGV[4] default      seconds a notice without a deadline leaves the worker
--   ARGV[5..]            handle, cause, deadline ('' if the notice has none) triples
-- Returns the handles moved to draining.
local handles_key, index_key, counts_key, notice_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local default = tonumber(ARGV[4])
ensure_counts(handles_key, index_key, counts_key)
local moved = {}
for i = 5, #ARGV, 3 do
  local h, cause, deadline = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local raw = redis.call('HGET', handles_key, h)
  local r = raw and read_record(raw)
  if r and (not r.int or r.int == '') and r.s ~= 'stopping' then
    local was, before = r.s, count_fields(r, r.s)
    r.int = cause
    if LIVE[was] then
      r.s = 'draining'
      r.since = now
      r.drain_until = deadline or (now + default)
    end
    -- encoded before anything is written: a script that fails half-way is not undone
    local encoded = cjson.encode(r)
    if rewrite(index_key, counts_key, h, before, was, r, r.s) then
      local pool = r.p or ''
      redis.call('HINCRBY', METRICS, 'interruptions|' .. CLUSTER .. '|' .. pool .. '|' .. cause, r.w)
      redis.call('HSET', notice_key, h, now)
      if r.s ~= was then table.insert(moved, h) end
      redis.call('HSET', handles_key, h, encoded)
      if pool ~= '' then batch('interrupted', h, r.w, 'cause', cause, 'was', was, 'pool', pool)
      else batch('interrupted', h, r.w, 'cause', cause, 'was', was) end
    end
  end
end
flush()
return moved
