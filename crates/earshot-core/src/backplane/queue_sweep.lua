-- Removes dead and expired waiters among a lane's oldest: the twin of
-- `Lane::sweep` (queue.rs). Needs `is_dead_fn` (liveness.lua) before it.
-- KEYS: 1 the lane. ARGV: 1 now (ms), 2 most examined, 3 and 4 the node's
-- view of the dead. Answers how many went. The lane lives a day past the
-- last sweep (every node sweeps every lane every 30 s): an empty lane is
-- gone anyway, and one whose nodes are all gone goes with its entries.
local now = tonumber(ARGV[1])
local is_dead = is_dead_fn(ARGV[3], ARGV[4])
local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #entries == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], 86400000)
local removed = 0
for _, e in ipairs(entries) do
  local exp, n, t = string.match(e, '^%d+|(%d+)|(%d+)|(%x+)|')
  if not exp or tonumber(exp) <= now or is_dead(n, t) then
    redis.call('ZREM', KEYS[1], e)
    removed = removed + 1
  end
end
return removed
