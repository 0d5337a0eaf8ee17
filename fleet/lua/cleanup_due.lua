-- KEYS[3] cleanup; ARGV[4] first retry (s), ARGV[5] most tries. Returns the dead handles whose
-- cleanup kill is due now (handle, pool pairs), pushing each one's next try back (doubling, at most 5 minutes); one
-- tried `most` times is given up (a `cleanup_abandoned` event).
local base, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local due = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local h, c = all[i], cjson.decode(all[i + 1])
  if c.next <= now then
    c.tries = c.tries + 1
    if c.tries > most then
      redis.call('HDEL', KEYS[3], h)
      batch('cleanup_abandoned', h, c.w, 'tries', tostring(c.tries - 1))
    else
      c.next = now + math.min(base * math.pow(2, c.tries), math.max(300, base))
      redis.call('HSET', KEYS[3], h, cjson.encode(c))
      table.insert(due, h)
      table.insert(due, c.p or '')
    end
  end
end
flush()
return due
