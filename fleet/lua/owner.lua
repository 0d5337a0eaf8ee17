-- A control plane claims, or keeps, its fleet's public queue in this Redis database (fleet.owner).
-- KEYS[1]: the queue's owner key; ARGV[1]: the fleet id; ARGV[2]: the claim's lifetime (ms)
-- Returns the owner: ARGV[1] when claimed or kept (its lifetime renewed), else the fleet id of the
-- control plane that consumes the queue now (nothing written).
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
