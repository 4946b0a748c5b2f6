-- Joins a room: the Lua twin of `RoomRecord::join` (room.rs). Needs
-- `is_dead_fn` (liveness.lua) put before it.
-- KEYS: 1 the room (a hash: `m:<peer>` -> `<node>:<token>:<conn>:<key>` of
-- each member, `next` peer id, `lock` verifier, `x:<key>` removed clients,
-- `ab` and `at` the passphrase attempts left and since when).
-- ARGV: 1 conn, 2 node, 3 token, 4 client key, 5 verifier ('' if none),
-- 6 most members, 7 the room's TTL (ms), 8 passphrase attempts on the room
-- (burst), 9 one more per this many ms, 10 now (ms), 11 and 12 the node's
-- view of the dead (see liveness.lua), 13 '1' if the client's room
-- creation was charged for this join.
-- Members of dead nodes are dropped first. A room with no member left
-- answers `create`: the node charges the client's creations (in the
-- client's slot) and joins again with ARGV 13 set. Answers the JSON
-- `decode_room_reply` reads.
local k = KEYS[1]
local conn, node, key, ver = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local now = tonumber(ARGV[10])
if redis.call('HEXISTS', k, 'x:' .. key) == 1 then
  return '{"r":"refused","code":"removed"}'
end
local is_dead = is_dead_fn(ARGV[11], ARGV[12])
local flat = redis.call('HGETALL', k)
local others = {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if string.sub(f, 1, 2) == 'm:' then
    local n, t, c, mk = string.match(v, '^(%d+):(%x+):(%d+):(%x+)$')
    if n and not is_dead(n, t) then
      table.insert(others, '[' .. string.sub(f, 3) .. ',"' .. c .. '","' .. mk .. '"]')
    else
      redis.call('HDEL', k, f)
    end
  end
end
if #others >= tonumber(ARGV[6]) then
  return '{"r":"refused","code":"room_full"}'
end
local lock = redis.call('HGET', k, 'lock')
if lock then
  if ver == '' then return '{"r":"refused","code":"passphrase_required"}' end
  local burst, every = tonumber(ARGV[8]), tonumber(ARGV[9])
  local tokens = tonumber(redis.call('HGET', k, 'ab') or burst)
  local at = tonumber(redis.call('HGET', k, 'at') or now)
  local gained = math.floor((now - at) / every)
  if gained > 0 then
    tokens = math.min(burst, tokens + gained)
    at = at + gained * every
  end
  if tokens >= burst then at = now end
  if tokens < 1 then
    return '{"r":"refused","code":"rate_limited","ms":' .. math.max(1, at + every - now) .. '}'
  end
  redis.call('HSET', k, 'ab', tokens - 1, 'at', at)
  if ver ~= lock then return '{"r":"refused","code":"wrong_passphrase"}' end
end
if #others == 0 and ARGV[13] ~= '1' then return '{"r":"create"}' end
local peer = redis.call('HINCRBY', k, 'next', 1)
redis.call('HSET', k, 'm:' .. peer, node .. ':' .. ARGV[3] .. ':' .. conn .. ':' .. key)
redis.call('PEXPIRE', k, ARGV[7])
local locked = 'false'
if lock then locked = 'true' end
return '{"r":"joined","peer":' .. peer .. ',"locked":' .. locked .. ',"others":['
  .. table.concat(others, ',') .. ']}'
