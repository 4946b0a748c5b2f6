-- Takes a waiter out of its lane: the twin of `Lane::leave` (queue.rs).
-- KEYS: the lane (sorted set, hash). ARGV: 1 conn. Answers 1 if it was
-- there (0: someone took it, or it left already).
local r = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return r
