-- is_dead_fn(dead, born): the Lua twin of `Liveness::is_dead` (nodes.rs).
-- `dead`: `<node>:<token>` pairs, comma separated, that the calling node's
-- view of the registry holds dead; `born`: when the registry was made
-- (ms). A token is dead if listed, or minted (its first 12 hex digits, ms)
-- more than 2 s before the registry was born: it belongs to a registry
-- that was lost. Put before the scripts that call it.
local function is_dead_fn(list, born)
  local dead = {}
  for x in string.gmatch(list, '[^,]+') do dead[x] = true end
  born = tonumber(born) or 0
  return function(n, t)
    if dead[n .. ':' .. t] then return true end
    local minted = tonumber(string.sub(t, 1, 12), 16) or 0
    return minted + 2000 < born
  end
end
