-- Extends owner marks that are free or already the caller's; leaves other instances' marks, so a
-- stale instance never steals back a peer that moved.
-- KEYS: {p}:peer:{peerId}:owner, one per peer
-- ARGV[1]: the server id renewing; ARGV[2]: the mark's time to live in ms
for _, key in ipairs(KEYS) do
  local owner = redis.call("GET", key)
  if not owner or owner == ARGV[1] then redis.call("SET", key, ARGV[1], "PX", ARGV[2]) end
end
return 0
