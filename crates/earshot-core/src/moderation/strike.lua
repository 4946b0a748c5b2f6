-- Counts a strike against a client, pooled across nodes: the Lua twin of
-- `Strikes::add` in strikes.rs (keep the two agreeing). The reporter's
-- report allowance is charged before, in the reporter's own slot: a
-- strike over it never gets here.
--
-- KEYS:  1 the reported client's strikes, 2 its ban (value: until when, ms).
-- ARGV:  1 reporter key, 2 weight (thousandths), 3 strike window (ms),
--        4 distinct reporters for a ban, 5 total weight for a ban, 6 ban
--        lengths (ms, comma separated; the last repeats), 7 the reporter's
--        network key, 8 its network key under the previous secret ('-' if
--        none), 9 ms since the reporter's node first saw it, 10 the room
--        the report was made in ('-' for a stranger call), 11 "arrived
--        together" (ms; 0: off), 12 most strikes kept, 13 now (ms).
-- The hash holds `<reporter>` -> `<ms>:<weight>:<net>:<prev>:<arrived ms>:<room>`
-- for each strike within the window, and `n`, the bans so far; it lives one
-- window past the last strike. Answers the ban's length in ms, or 0.
local k = KEYS[1]
local now = tonumber(ARGV[13])
local window = tonumber(ARGV[3])
local flat = redis.call('HGETALL', k)
local strikes = {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if f ~= 'n' then
    local at, w, net, prev, arr, room =
      string.match(v, '^(%d+):(%d+):(%x+):([%x-]+):(%-?%d+):([%x-]+)$')
    if at and now - tonumber(at) < window then
      -- A reporter's strike counts once.
      if f == ARGV[1] then return 0 end
      table.insert(strikes, {f = f, at = tonumber(at), w = tonumber(w), net = net,
        prev = prev, arr = tonumber(arr), room = room})
    else
      redis.call('HDEL', k, f)
    end
  end
end
local weight = tonumber(ARGV[2])
-- A reporter who has shown nothing yet weighs nothing, and is not kept.
if weight <= 0 then return 0 end
local me = {f = ARGV[1], at = now, w = weight, net = ARGV[7], prev = ARGV[8],
  arr = now - tonumber(ARGV[9]), room = ARGV[10]}
-- Full: the lightest strike (then the oldest, then the smallest reporter
-- key) makes way for a heavier one.
if #strikes >= tonumber(ARGV[12]) then
  local low = nil
  for i, s in ipairs(strikes) do
    local l = low and strikes[low]
    if not l or s.w < l.w or (s.w == l.w and (s.at < l.at or (s.at == l.at and s.f < l.f))) then
      low = i
    end
  end
  if not low or weight <= strikes[low].w then return 0 end
  redis.call('HDEL', k, strikes[low].f)
  table.remove(strikes, low)
end
table.insert(strikes, me)
-- Strikes from one network (under either secret), one room, or reporters
-- first seen together are one reporter, weighing as its heaviest strike.
local together = tonumber(ARGV[11])
local function same(a, b)
  if a.net == b.net or a.prev == b.net or b.prev == a.net then return true end
  if a.room ~= '-' and a.room == b.room then return true end
  return together > 0 and math.abs(a.arr - b.arr) < together
end
local parent = {}
for i = 1, #strikes do parent[i] = i end
local function find(i)
  while parent[i] ~= i do i = parent[i] end
  return i
end
for i = 1, #strikes do
  for j = i + 1, #strikes do
    if same(strikes[i], strikes[j]) then
      local a, b = find(i), find(j)
      if a ~= b then parent[b] = a end
    end
  end
end
local best, units, total = {}, 0, 0
for i = 1, #strikes do
  local r = find(i)
  if best[r] == nil then
    units = units + 1
    best[r] = 0
  end
  if strikes[i].w > best[r] then best[r] = strikes[i].w end
end
for _, w in pairs(best) do total = total + w end
if units >= tonumber(ARGV[4]) and total >= tonumber(ARGV[5]) then
  local n = redis.call('HINCRBY', k, 'n', 1)
  local lengths = {}
  for x in string.gmatch(ARGV[6], '%d+') do table.insert(lengths, tonumber(x)) end
  local ms = lengths[math.min(n, #lengths)] or 3600000
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if f ~= 'n' then redis.call('HDEL', k, f) end
  end
  redis.call('PEXPIRE', k, window)
  if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < now + ms then
    redis.call('SET', KEYS[2], now + ms, 'PX', ms)
  end
  return ms
end
redis.call('HSET', k, ARGV[1], now .. ':' .. weight .. ':' .. ARGV[7] .. ':' .. ARGV[8] .. ':'
  .. me.arr .. ':' .. ARGV[10])
redis.call('PEXPIRE', k, window)
return 0
