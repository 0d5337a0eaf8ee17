-- The dead handles whose cleanup kill is due now (fleet.state.sweeps Sweeps.cleanup_due), each
-- one's next try pushed back (doubling, at most 5 minutes); one tried `most` times is given up
-- (a `cleanup_abandoned` event).
-- KEYS (after lua/prelude.lua's two):
--   KEYS[3] cleanup_key  dead handles whose remains wait for a kill
-- ARGV (after the prelude's three):
--   ARGV[4] base         the first retry (seconds)
--   ARGV[5] most         the most tries
-- Returns handle, pool pairs.
local cleanup_key = KEYS[3]
local base, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local due = {}
local all = redis.call('HGETALL', cleanup_key)
for i = 1, #all, 2 do
  local h, c = all[i], cjson.decode(all[i + 1])
  if c.next <= now then
    c.tries = c.tries + 1
    if c.tries > most then
      redis.call('HDEL', cleanup_key, h)
      batch('cleanup_abandoned', h, c.w, 'tries', tostring(c.tries - 1))
    else
      c.next = now + math.min(base * math.pow(2, c.tries), math.max(300, base))
      redis.call('HSET', cleanup_key, h, cjson.encode(c))
      table.insert(due, h)
      table.insert(due, c.p or '')
    end
  end
end
flush()
return due
