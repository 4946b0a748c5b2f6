-- Removes dead and expired waiters among a lane's oldest: the twin of
-- `Lane::sweep` (queue.rs). Needs `is_dead_fn` (liveness.lua) before it.
-- KEYS: the lane (sorted set, hash). ARGV: 1 now (ms), 2 most examined,
-- 3 and 4 the node's view of the dead. Answers how many went.
local now = tonumber(ARGV[1])
local is_dead = is_dead_fn(ARGV[3], ARGV[4])
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then return 0 end
local vals = redis.call('HMGET', KEYS[2], unpack(ids))
local removed = 0
for i, c in ipairs(ids) do
  local exp, n, t
  if vals[i] then exp, n, t = string.match(vals[i], '^(%d+)|(%d+)|(%x+)|') end
  if not exp or tonumber(exp) <= now or is_dead(n, t) then
    redis.call('ZREM', KEYS[1], c)
    redis.call('HDEL', KEYS[2], c)
    removed = removed + 1
  end
end
return removed
