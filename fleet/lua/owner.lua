-- A control plane claims, or keeps, its fleet's public queue in this Redis database (fleet.owner).
-- KEYS:
--   KEYS[1] owner_key  the queue's owner key
-- ARGV:
--   ARGV[1] fleet_id   the fleet id of the control plane that asks
--   ARGV[2] lifetime   the claim's lifetime (ms)
-- Returns the owner: fleet_id when claimed or kept (its lifetime renewed), else the fleet id of the
-- control plane that consumes the queue now (nothing written).
local owner_key = KEYS[1]
local fleet_id, lifetime = ARGV[1], ARGV[2]
local owner = redis.call('GET', owner_key)
if owner and owner ~= fleet_id then
  return owner
end
redis.call('SET', owner_key, fleet_id, 'PX', lifetime)
return fleet_id
