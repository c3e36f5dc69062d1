-- Moves what peers pushed onto the intake list into the uplink stream, in order, in one atomic step:
-- an entry is either still on the intake or on the stream, never both or neither. Entries over the
-- size limit are dropped and counted (they never reach a server's memory). Several servers may run
-- it side by side: each call takes what is there when it runs.
-- KEYS[1]: {p}:uplink:in (list)   KEYS[2]: {p}:uplink (stream)
-- KEYS[3]: {p}:uplink:in:dropped  KEYS[4]: {p}:uplink:in:since
-- ARGV[1]: most entries to move   ARGV[2]: the size limit in bytes
-- ARGV[3]: most bytes to move in one call (bounds how long Redis is held)
-- Returns {moved, dropped, left on the intake, why Redis refused an add ("" if it did not)}.
local most, limit, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local moved, dropped, bytes, refused = 0, 0, 0, ""
-- The head is read, added, and only then popped: if Redis refuses the add (out of memory, say), the
-- entry stays where it was. LPOP, DEL and LLEN work even when Redis is out of memory.
while moved + dropped < most and bytes < budget do
  local entry = redis.call("LINDEX", KEYS[1], 0)
  if not entry then break end
  if #entry > limit then
    dropped = dropped + 1
  else
    local added = redis.pcall("XADD", KEYS[2], "*", "m", entry)
    if type(added) == "table" and added.err then
      refused = added.err
      break
    end
    moved = moved + 1
    bytes = bytes + #entry
  end
  redis.call("LPOP", KEYS[1])
end
if dropped > 0 then redis.pcall("INCRBY", KEYS[3], dropped) end
local left = redis.call("LLEN", KEYS[1])
if left == 0 then
  redis.call("DEL", KEYS[4])
else
  local now = redis.call("TIME")
  redis.pcall("SET", KEYS[4], now[1] * 1000 + math.floor(now[2] / 1000), "NX")
end
return {moved, dropped, left, refused}
