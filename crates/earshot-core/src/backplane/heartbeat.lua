-- A node's heartbeat in the registry: the Lua twin of `Registry::beat`
-- (nodes.rs). KEYS[1]: the registry (a hash: `layout` stamp, `born` when it
-- was made, `<node>:<token>` -> expiry ms for each token of each node).
-- ARGV: 1 node, 2 token, 3 the token it replaces ('' if none), 4 expiry
-- (ms), 5 now (ms), 6 this node's layout stamp, 7 forget tokens expired
-- before this (ms).
-- Answers `layout|<stamp>` (the registry is another layout's, with a
-- live token), `taken`
-- (a live token of another process holds the node number), or
-- `ok|<1 renewed, 2 new or lost>|<born>|<node>:<token>=<expiry>;...`.
local reg = KEYS[1]
local me, now, forget = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[7])
local stamp = redis.call('HGET', reg, 'layout')
if stamp and stamp ~= ARGV[6] then
  -- Another layout's registry: refused while any of its tokens lives;
  -- once none does, this node's layout takes the store over.
  local flat = redis.call('HGETALL', reg)
  for i = 1, #flat, 2 do
    if string.match(flat[i], '^%d+:%x+$') and tonumber(flat[i + 1]) > now then
      return 'layout|' .. stamp
    end
  end
  redis.call('DEL', reg)
  stamp = nil
end
if not stamp then
  redis.call('HSET', reg, 'layout', ARGV[6], 'born', ARGV[5])
end
local status = 2
local flat = redis.call('HGETALL', reg)
for i = 1, #flat, 2 do
  local n, t = string.match(flat[i], '^(%d+):(%x+)$')
  if n == me then
    if t == ARGV[2] then
      status = 1
    elseif t ~= ARGV[3] and tonumber(flat[i + 1]) > now then
      return 'taken'
    end
  end
end
for i = 1, #flat, 2 do
  if string.match(flat[i], '^%d+:%x+$') and tonumber(flat[i + 1]) < forget then
    redis.call('HDEL', reg, flat[i])
  end
end
redis.call('HSET', reg, me .. ':' .. ARGV[2], ARGV[4])
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[2] then
  -- The old token is dead from now on, for everyone (past any grace a
  -- view gives an expiry).
  redis.call('HSET', reg, me .. ':' .. ARGV[3], now - 1000)
end
local out = {}
flat = redis.call('HGETALL', reg)
local born = 0
for i = 1, #flat, 2 do
  if flat[i] == 'born' then
    born = flat[i + 1]
  elseif string.find(flat[i], ':', 1, true) then
    table.insert(out, flat[i] .. '=' .. flat[i + 1])
  end
end
table.sort(out)
return 'ok|' .. status .. '|' .. born .. '|' .. table.concat(out, ';')
