-- Keeps waiters alive: the twin of `Lane::touch` (queue.rs). KEYS: the
-- lane (sorted set, hash). ARGV: 1 new expiry (ms), 2... conns. Answers
-- how many were still there.
local n = 0
for i = 2, #ARGV do
  local e = redis.call('HGET', KEYS[2], ARGV[i])
  if e then
    local bar = string.find(e, '|', 1, true)
    if bar then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[1] .. string.sub(e, bar))
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('PEXPIRE', KEYS[1], 86400000)
  redis.call('PEXPIRE', KEYS[2], 86400000)
end
return n
