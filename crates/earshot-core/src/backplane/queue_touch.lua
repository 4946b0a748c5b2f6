-- Keeps waiters alive: the twin of `Lane::touch` (queue.rs). KEYS: 1 the
-- lane. ARGV: pairs of entries, the old and its renewal (a later expiry),
-- which takes its place. Answers how many were still there.
local n = 0
for i = 1, #ARGV - 1, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZADD', KEYS[1], s, ARGV[i + 1])
    n = n + 1
  end
end
return n
