-- Tallies of one scope (refusals by code, usage by model and credential) for status and reports.
-- KEYS[1] day tally hash, KEYS[2] month tally hash.
-- ARGV: day ttl s, month ttl s, max fields, then field/count pairs.
-- A field not yet present is added only while the hash holds fewer than max fields (bounded).
local max_fields = tonumber(ARGV[3])
for k = 1, 2 do
  local key = KEYS[k]
  for i = 4, #ARGV, 2 do
    local name = ARGV[i]
    if redis.call('HEXISTS', key, name) == 1 or redis.call('HLEN', key) < max_fields then
      redis.call('HINCRBY', key, name, ARGV[i + 1])
    end
  end
  redis.call('EXPIRE', key, ARGV[k])
end
return 1
