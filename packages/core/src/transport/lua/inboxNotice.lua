-- Appends a notice (a rejection, `session_expired`) to an inbox that may not belong to anyone: an
-- inbox this creates expires, so registrations in made-up names leave no keys behind for long.
-- KEYS[1]: {p}:peer:{peerId}:inbox
-- ARGV[1]: the payload field name; ARGV[2]: the payload; ARGV[3]: the expiry in ms of a new inbox
local existed = redis.call("EXISTS", KEYS[1])
local id = redis.call("XADD", KEYS[1], "*", ARGV[1], ARGV[2])
if existed == 0 then redis.call("PEXPIRE", KEYS[1], ARGV[3]) end
return id
