-- Check every limit of one scope (a key, or a pool) and, only when all admit, reserve the estimate.
-- KEYS: 1 window (zset id -> admitted at ms), 2 window tokens (hash id -> tokens, _sum),
--       3 day counters, 4 month counters, 5 reservation records, 6 reservation expiries (zset)
-- ARGV: 1 now ms, 2 reservation id, 3 estimated tokens, 4 estimated micro-USD,
--       5 requests/min, 6 tokens/min, 7 tokens/day, 8 tokens/month, 9 micro-USD/month (-1: no limit),
--       10 day counter ttl s, 11 month counter ttl s, 12 reservation ttl ms, 13 key base,
--       14 day id, 15 month id, 16..19 month seed (period, requests, tokens, micro-USD), 20..23 day seed
-- Returns {admitted, reason, retry ms (-1: not before the period ends), window requests,
--          window tokens, ms until the oldest window entry leaves}
-- reason: 0 admitted, 1 requests/min, 2 tokens/min, 3 tokens/day, 4 tokens/month, 5 spend/month
local now = tonumber(ARGV[1])
local id = ARGV[2]
local est_tok = tonumber(ARGV[3])
local est_usd = tonumber(ARGV[4])
local rpm = tonumber(ARGV[5])
local tpm = tonumber(ARGV[6])
local tpd = tonumber(ARGV[7])
local tpmo = tonumber(ARGV[8])
local usd_cap = tonumber(ARGV[9])
local base = ARGV[13]

-- A client retry after a lost reply: the first attempt already admitted this reservation.
if redis.call('HEXISTS', KEYS[5], id) == 1 then
  return { 1, 0, -1, -1, -1, -1 }
end

sweep(base, KEYS[5], KEYS[6], now)
seed_if_absent(KEYS[4], ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19], ARGV[11])
seed_if_absent(KEYS[3], ARGV[14], ARGV[20], ARGV[21], ARGV[22], ARGV[23], ARGV[10])

local windowed = rpm >= 0 or tpm >= 0
local count, wsum, reset = 0, 0, 0
if windowed then
  prune_window(KEYS[1], KEYS[2], now)
  count = redis.call('ZCARD', KEYS[1])
  wsum = num(redis.call('HGET', KEYS[2], '_sum'))
  if count > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + 60000 - now
  end
end

local function deny(reason, retry)
  return { 0, reason, retry, count, wsum, reset }
end

if rpm >= 0 and count + 1 > rpm then
  if rpm == 0 then
    return deny(1, -1)
  end
  return deny(1, reset)
end

if tpm >= 0 and wsum + est_tok > tpm then
  if est_tok > tpm then
    return deny(2, -1)
  end
  -- Earliest moment enough tokens have left the window for this estimate to fit.
  local need = wsum + est_tok - tpm
  local freed, offset = 0, 0
  while true do
    local batch = redis.call('ZRANGE', KEYS[1], offset, offset + 199, 'WITHSCORES')
    if #batch == 0 then
      return deny(2, 60000)
    end
    local ids = {}
    for i = 1, #batch, 2 do
      ids[#ids + 1] = batch[i]
    end
    local vals = redis.call('HMGET', KEYS[2], unpack(ids))
    for i = 1, #ids do
      freed = freed + num(vals[i])
      if freed >= need then
        return deny(2, tonumber(batch[2 * i]) + 60000 - now)
      end
    end
    offset = offset + 200
  end
end

if tpd >= 0 then
  local d = redis.call('HMGET', KEYS[3], 'in', 'out', 'stok', 'rtok')
  if num(d[1]) + num(d[2]) + num(d[3]) + num(d[4]) + est_tok > tpd then
    return deny(3, -1)
  end
end

if tpmo >= 0 or usd_cap >= 0 then
  local m = redis.call('HMGET', KEYS[4], 'in', 'out', 'stok', 'rtok', 'usd', 'rusd')
  if tpmo >= 0 and num(m[1]) + num(m[2]) + num(m[3]) + num(m[4]) + est_tok > tpmo then
    return deny(4, -1)
  end
  if usd_cap >= 0 and num(m[5]) + num(m[6]) + est_usd > usd_cap then
    return deny(5, -1)
  end
end

if windowed then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HSET', KEYS[2], id, ARGV[3])
  redis.call('HINCRBY', KEYS[2], '_sum', ARGV[3])
  -- Entries outlive their minute a little; pruning, not expiry, decides what counts.
  redis.call('PEXPIRE', KEYS[1], 120000)
  redis.call('PEXPIRE', KEYS[2], 120000)
  count = count + 1
  wsum = wsum + est_tok
  if reset == 0 then
    reset = 60000
  end
end
redis.call('HINCRBY', KEYS[3], 'rtok', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'rusd', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[10])
redis.call('HINCRBY', KEYS[4], 'rtok', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'rusd', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[11])
redis.call('HSET', KEYS[5], id, ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[14] .. ':' .. ARGV[15] .. ':o')
redis.call('ZADD', KEYS[6], istr(now + tonumber(ARGV[12])), id)
-- Records must outlive the counters they point into, or a crashed reservation could never be swept.
redis.call('EXPIRE', KEYS[5], ARGV[11])
redis.call('EXPIRE', KEYS[6], ARGV[11])
return { 1, 0, -1, count, wsum, reset }
