-- Admits a search to the stranger queue, in the client's slot: the Lua
-- twin of `Client::admit` (admission.rs). Needs `take` (take.lua) before it.
-- KEYS: 1 the client's ban (value: until when, ms), 2 its search
-- allowance, 3 whom it avoids (sorted set: `c<conn>` or `k<key>` by until
-- when, ms). ARGV: 1 now (ms), 2 and 3 the search allowance (burst, one
-- more per this many ms; '' and '' for a join that is not charged).
-- Answers the JSON `decode_admission` reads: limited, banned, or ok with
-- whom the client avoids (comma separated).
local now = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local wait = take(KEYS[2], ARGV[2], ARGV[3], now)
  if wait > 0 then return '{"r":"limited","ms":' .. wait .. '}' end
end
local ban = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if ban > now then return '{"r":"banned","ms":' .. (ban - now) .. '}' end
local avoid = redis.call('ZRANGE', KEYS[3], '(' .. now, '+inf', 'BYSCORE')
return '{"r":"ok","avoid":"' .. table.concat(avoid, ',') .. '"}'
