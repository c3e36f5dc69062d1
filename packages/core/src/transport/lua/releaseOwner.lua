-- Deletes an owner mark only if it is still the caller's (a newer owner's mark stays).
-- KEYS[1]: {p}:peer:{peerId}:owner
-- ARGV[1]: the server id releasing
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
