-- Replace one scope's reservation with the request's actual usage.
-- KEYS: 1 window tokens, 2 day counters, 3 month counters, 4 reservation records, 5 reservation expiries
-- ARGV: 1 now ms, 2 reservation id, 3 tokens, 4 input tokens, 5 cached input tokens, 6 output tokens,
--       7 micro-USD, 8 day counter ttl s, 9 month counter ttl s, 10 key base, 11 day id, 12 month id,
--       13..16 month seed (period, requests, tokens, micro-USD), 17..20 day seed
-- Returns 1 when counted, 0 when this reservation was already settled or refunded (a retry).
local now = tonumber(ARGV[1])
local id = ARGV[2]
local base = ARGV[10]

sweep(base, KEYS[4], KEYS[5], now)
seed_if_absent(KEYS[3], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[9])
seed_if_absent(KEYS[2], ARGV[11], ARGV[17], ARGV[18], ARGV[19], ARGV[20], ARGV[8])

local rec = redis.call('HGET', KEYS[4], id)
if rec then
  local tok, usd, day, month, state = parse_record(rec)
  if state ~= 'o' then
    return 0
  end
  unreserve(base, day, month, tok, usd)
end
-- No record: it expired (a very long request) or Redis lost it; the actual usage still counts.
redis.call('HSET', KEYS[4], id, '0:0:' .. ARGV[11] .. ':' .. ARGV[12] .. ':d')
redis.call('ZADD', KEYS[5], istr(now + 60000), id)

for i, key in ipairs({ KEYS[2], KEYS[3] }) do
  redis.call('HINCRBY', key, 'req', 1)
  redis.call('HINCRBY', key, 'in', ARGV[4])
  redis.call('HINCRBY', key, 'cin', ARGV[5])
  redis.call('HINCRBY', key, 'out', ARGV[6])
  redis.call('HINCRBY', key, 'usd', ARGV[7])
  redis.call('HSET', key, 'last', ARGV[1])
  redis.call('EXPIRE', key, ARGV[7 + i])
end

-- The window entry (if still in the minute) now holds the actual tokens instead of the estimate.
local old = redis.call('HGET', KEYS[1], id)
if old then
  redis.call('HSET', KEYS[1], id, ARGV[3])
  redis.call('HINCRBY', KEYS[1], '_sum', istr(tonumber(ARGV[3]) - tonumber(old)))
end
return 1
