-- Drop one scope's reservation without usage: refund (upstream failed; the request still counts
-- towards requests/min) or cancel (another scope denied it; it never went upstream).
-- KEYS: 1 window, 2 window tokens, 3 reservation records, 4 reservation expiries
-- ARGV: 1 now ms, 2 reservation id, 3 key base, 4 '1' to cancel (also remove the window entry)
-- Returns 1 when released, 0 when nothing was held (already settled, refunded or expired).
local now = tonumber(ARGV[1])
local id = ARGV[2]
local base = ARGV[3]

sweep(base, KEYS[3], KEYS[4], now)
local rec = redis.call('HGET', KEYS[3], id)
if not rec then
  return 0
end
local tok, usd, day, month, state = parse_record(rec)
if state ~= 'o' then
  return 0
end
unreserve(base, day, month, tok, usd)
redis.call('HSET', KEYS[3], id, '0:0:' .. day .. ':' .. month .. ':d')
redis.call('ZADD', KEYS[4], istr(now + 60000), id)

local old = redis.call('HGET', KEYS[2], id)
if old then
  redis.call('HINCRBY', KEYS[2], '_sum', istr(-tonumber(old)))
  if ARGV[4] == '1' then
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('HSET', KEYS[2], id, '0')
  end
end
return 1
