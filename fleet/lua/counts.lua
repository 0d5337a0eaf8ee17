-- KEYS[1] handles, KEYS[2] index, KEYS[3] counts. The cluster's counts, built first if need be.
ensure_counts(KEYS[1], KEYS[2], KEYS[3])
return redis.call('HGETALL', KEYS[3])
