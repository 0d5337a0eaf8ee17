-- Mark handles the cloud reclaims (or reclaimed) as interrupted. KEYS[3] handles, KEYS[4] index,
-- KEYS[5] counts, KEYS[6] notice; ARGV[4] seconds a notice without a deadline leaves the worker,
-- then handle, cause, deadline ('' if the notice has none) triples.
-- An initializing or running handle moves to draining until its deadline: it stops counting as
-- live, so the next reconcile launches its replacement, and the sweep kills it once it holds no
-- task and the replacement is launched, or at the deadline. A draining one only gains the mark.
-- A stopping one is left alone (Fleet kills it anyway). Marking twice changes nothing: a notice
-- received again after a crash is harmless. Each interrupted handle counts in `int` until it
-- leaves (lua/index.lua's move), which is what lets a reconcile launch its replacement above
-- max_workers; the notice time waits in KEYS[6] for the next handle that runs (the replacement).
ensure_counts(KEYS[3], KEYS[4], KEYS[5])
local default = tonumber(ARGV[4])
local moved = {}
for i = 5, #ARGV, 3 do
  local h, cause, deadline = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local raw = redis.call('HGET', KEYS[3], h)
  local r = raw and read_record(raw)
  if r and (not r.int or r.int == '') and r.s ~= 'stopping' then
    local was = r.s
    r.int = cause
    if was == 'initializing' or was == 'running' then
      r.s = 'draining'
      r.since = now
      r.drain_until = deadline or (now + default)
    end
    -- encoded before anything is written: a script that fails half-way is not undone
    local encoded = cjson.encode(r)
    redis.call('HINCRBY', KEYS[5], 'int', r.w)
    local pool = r.p or ''
    redis.call('HINCRBY', METRICS, 'interruptions|' .. CLUSTER .. '|' .. pool .. '|' .. cause, r.w)
    redis.call('HSET', KEYS[6], h, now)
    if r.s ~= was then
      move(KEYS[4], KEYS[5], h, r, was, r.s)
      table.insert(moved, h)
    end
    redis.call('HSET', KEYS[3], h, encoded)
    if pool ~= '' then batch('interrupted', h, r.w, 'cause', cause, 'was', was, 'pool', pool)
    else batch('interrupted', h, r.w, 'cause', cause, 'was', was) end
  end
end
flush()
return moved
