-- Keeps a client apart from a connection or another client until a time:
-- the Lua twin of `Client::avoid` (admission.rs). Written to both sides'
-- slots, so either side's admission knows.
-- KEYS: 1 the client's avoid set. ARGV: 1 now (ms), 2 whom (`c<conn>` or
-- `k<key>`), 3 until when (ms), 4 most kept (the soonest to end go first).
-- Answers how many it keeps.
local now, cap = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now)) end
return n
