-- Takes a member out of a room: the twin of `RoomRecord::leave` (room.rs).
-- KEYS: 1 the room. ARGV: 1 peer. The room goes with its last member,
-- lock and removals included. Answers 1 if the room went.
local k = KEYS[1]
redis.call('HDEL', k, 'm:' .. ARGV[1])
for _, f in ipairs(redis.call('HKEYS', k)) do
  if string.sub(f, 1, 2) == 'm:' then return 0 end
end
redis.call('DEL', k)
return 1
