-- How long the intake has been seen non-empty without a break, in ms (0 when empty): the part of
-- the uplink backlog not moved onto the stream yet. The first look at a non-empty intake starts the
-- clock; the mover stops it when it empties the intake.
-- KEYS[1]: {p}:uplink:in   KEYS[2]: {p}:uplink:in:since
if redis.call("LLEN", KEYS[1]) == 0 then
  redis.call("DEL", KEYS[2])
  return 0
end
local now = redis.call("TIME")
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call("SET", KEYS[2], ms, "NX")
return math.max(0, ms - tonumber(redis.call("GET", KEYS[2])))
