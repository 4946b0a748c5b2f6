-- Pairs a joiner with a waiter of one lane of the stranger queue, or
-- queues it there: the Lua twin of `Lane::pair` (queue.rs). Needs
-- `is_dead_fn` (liveness.lua) put before it.
-- KEYS: 1 the lane's waiters by arrival (sorted set), 2 their entries
-- (hash: conn -> `<expiry>|<node>|<token>|<key>|<open at>|<country>|<tags>`).
-- ARGV: 1 conn, 2 node, 3 token, 4 client key, 5 when it takes anyone
-- (ms), 6 country ('' if none), 7 tags (comma separated), 8 now (ms),
-- 9 the entry's expiry (ms), 10 most waiters examined, 11 arrival (ms: the
-- queue position), 12 '1' if it may wait here already (it keeps its
-- position), 13 whom it avoids (`c<conn>` and `k<key>`, comma separated),
-- 14 and 15 the node's view of the dead (see liveness.lua), 16 '1' to
-- answer `empty` rather than wait in a lane with no one else in it.
-- Answers the JSON `decode_pair_reply` reads.
local z, w = KEYS[1], KEYS[2]
local me, now = ARGV[1], tonumber(ARGV[8])
local score = ARGV[11]
if ARGV[12] == '1' then
  local s = redis.call('ZSCORE', z, me)
  if s then
    score = s
    redis.call('ZREM', z, me)
    redis.call('HDEL', w, me)
  end
end
local is_dead = is_dead_fn(ARGV[14], ARGV[15])
local avoid = {}
for x in string.gmatch(ARGV[13], '[^,]+') do avoid[x] = true end
local tags = {}
for x in string.gmatch(ARGV[7], '[^,]+') do table.insert(tags, x) end
local open = tonumber(ARGV[5]) <= now
local limit = tonumber(ARGV[10])
-- Tags are letters, digits, spaces and '-': they need no JSON escaping.
local function list(xs)
  if #xs == 0 then return '[]' end
  return '["' .. table.concat(xs, '","') .. '"]'
end
local examined, start, company = 0, 0, false
while examined < limit do
  local page = 8
  if examined > 0 then page = limit - examined end
  page = math.min(page, limit - examined)
  local ids = redis.call('ZRANGE', z, start, start + page - 1)
  if #ids == 0 then break end
  local vals = redis.call('HMGET', w, unpack(ids))
  for i, c in ipairs(ids) do
    examined = examined + 1
    local exp, n, t, k, o, co, tg
    if vals[i] then
      exp, n, t, k, o, co, tg =
        string.match(vals[i], '^(%d+)|(%d+)|(%x+)|(%x+)|(%d+)|(%a*)|(.*)$')
    end
    if not exp or tonumber(exp) <= now or is_dead(n, t) then
      redis.call('ZREM', z, c)
      redis.call('HDEL', w, c)
    else
      start = start + 1
      if c ~= me then company = true end
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
          redis.call('ZREM', z, c)
          redis.call('HDEL', w, c)
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
if ARGV[16] == '1' and not company then return '{"r":"empty"}' end
redis.call('ZADD', z, score, me)
redis.call('HSET', w, me, ARGV[9] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|'
  .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7])
redis.call('PEXPIRE', z, 86400000)
redis.call('PEXPIRE', w, 86400000)
return '{"r":"queued"}'
