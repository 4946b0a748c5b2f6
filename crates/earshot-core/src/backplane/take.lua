-- take(key, burst, every_ms, now_ms): takes one token from a client's
-- allowance, a token bucket in the string `key` (`<ms of refill
-- banked>:<when>`), kept only until it is full again. Answers 0, or the ms
-- until a token is there. The Lua twin of `allowance::take`
-- (allowance.rs); put before the scripts that call it.
local function take(rk, burst, every, now)
  every = tonumber(every)
  local cap = every * tonumber(burst)
  local level, at = cap, now
  local b = redis.call('GET', rk)
  if b then
    local l, t = string.match(b, '^(%d+):(%d+)$')
    if l then level, at = tonumber(l), tonumber(t) end
  end
  level = math.min(cap, level + math.max(0, now - at))
  if level < every then return every - level end
  level = level - every
  redis.call('SET', rk, level .. ':' .. now, 'PX', cap - level + 1)
  return 0
end
