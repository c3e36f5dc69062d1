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
-- Read a few at a time (an entry may be huge: a hostile one is read once, never many together),
-- added, and only then trimmed off the head: if Redis refuses an add (out of memory, say), that
-- entry and those after it stay where they were. LTRIM, DEL and LLEN work even when Redis is out of
-- memory.
local CHUNK = 16
while refused == "" and moved + dropped < most and bytes < budget do
  local entries = redis.call("LRANGE", KEYS[1], 0, math.min(CHUNK, most - moved - dropped) - 1)
  if #entries == 0 then break end
  local taken = 0
  for _, entry in ipairs(entries) do
    if bytes >= budget then break end
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
    taken = taken + 1
  end
  if taken > 0 then redis.call("LTRIM", KEYS[1], taken, -1) end
  if taken < #entries then break end
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
