-- Pairs a joiner with a waiter of one lane of the stranger queue, or
-- queues it there: the Lua twin of `Lane::pair` (queue.rs). Needs
-- `is_dead_fn` (liveness.lua) put before it.
-- KEYS: 1 the lane: a sorted set of entries by arrival, each entry
-- `<conn>|<expiry>|<node>|<token>|<key>|<open at>|<country>|<tags>`.
-- ARGV: 1 the joiner's entry, 2 its tags (comma separated), 3 when it
-- takes anyone (ms), 4 now (ms), 5 most waiters examined, 6 its arrival
-- (ms: its place in the queue), 7 the entry it may wait under already
-- ('' if none: a join again takes that one's place), 8 whom it avoids
-- (`c<conn>` and `k<key>`, comma separated), 9 and 10 the node's view of
-- the dead (see liveness.lua).
-- Answers the JSON `decode_pair_reply` reads. The lane's TTL comes from
-- the sweeps (queue_sweep.lua), not here: one less write a join.
local z = KEYS[1]
local me = string.match(ARGV[1], '^(%d+)|')
local now = tonumber(ARGV[4])
local score = ARGV[6]
if ARGV[7] ~= '' then
  local s = redis.call('ZSCORE', z, ARGV[7])
  if s then
    score = s
    redis.call('ZREM', z, ARGV[7])
  end
end
local is_dead = is_dead_fn(ARGV[9], ARGV[10])
local avoid = {}
for x in string.gmatch(ARGV[8], '[^,]+') do avoid[x] = true end
local tags = {}
for x in string.gmatch(ARGV[2], '[^,]+') do table.insert(tags, x) end
local open = tonumber(ARGV[3]) <= now
local limit = tonumber(ARGV[5])
-- Tags are letters, digits, spaces and '-': they need no JSON escaping.
local function list(xs)
  if #xs == 0 then return '[]' end
  return '["' .. table.concat(xs, '","') .. '"]'
end
local examined, start = 0, 0
while examined < limit do
  local page = 8
  if examined > 0 then page = limit - examined end
  local entries = redis.call('ZRANGE', z, start, start + page - 1)
  if #entries == 0 then break end
  for _, e in ipairs(entries) do
    examined = examined + 1
    local c, exp, n, t, k, o, co, tg =
      string.match(e, '^(%d+)|(%d+)|(%d+)|(%x+)|(%x+)|(%d+)|(%a*)|(.*)$')
    if not c or tonumber(exp) <= now or is_dead(n, t) then
      redis.call('ZREM', z, e)
    else
      start = start + 1
      if c ~= me and not avoid['c' .. c] and not avoid['k' .. k] then
        local shared = {}
        if tg ~= '' and #tags > 0 then
          local theirs = {}
          for x in string.gmatch(tg, '[^,]+') do theirs[x] = true end
          for _, x in ipairs(tags) do
            if theirs[x] then table.insert(shared, x) end
          end
        end
        local they_open = tg == '' or tonumber(o) <= now
        if #shared > 0 or ((#tags == 0 or open) and they_open) then
          redis.call('ZREM', z, e)
          local country = 'null'
          if co ~= '' then country = '"' .. co .. '"' end
          return '{"r":"matched","conn":"' .. c .. '","key":"' .. k .. '","shared":'
            .. list(shared) .. ',"country":' .. country .. '}'
        end
      end
    end
    if examined >= limit then break end
  end
end
redis.call('ZADD', z, score, ARGV[1])
return '{"r":"queued"}'
