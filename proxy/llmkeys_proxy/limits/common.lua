-- Prelude of every limiter script (limits/redis.py prepends it to each script body).
-- Every key a script touches carries the same hash tag as KEYS (`{keyId}` or `{pool:<id>}`), so a
-- script stays inside one Redis Cluster slot; period keys named in reservation records are built
-- from ARGV `base`, which carries that tag too.
-- Records of reservations: "<tokens>:<micro-usd>:<day id>:<month id>:<state>", state o(pen) or d(one).

-- Lua 5.1 would print large numbers as 1e+12, which HINCRBY refuses.
local function istr(n)
  return string.format('%d', n)
end

local function num(v)
  if not v then
    return 0
  end
  return tonumber(v) or 0
end

local function parse_record(rec)
  local tok, usd, day, month, state = string.match(rec, '^(%-?%d+):(%-?%d+):([^:]+):([^:]+):(%a)$')
  return tonumber(tok), tonumber(usd), day, month, state
end

-- Give back what a reservation holds in its period counters. Only counters that still exist: creating
-- one here would make a later re-seed skip it.
local function unreserve(base, day, month, tok, usd)
  for _, key in ipairs({ base .. 'd:' .. day, base .. 'm:' .. month }) do
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'rtok', istr(-tok))
      redis.call('HINCRBY', key, 'rusd', istr(-usd))
    end
  end
end

-- Release reservations nobody settled (their proxy crashed) and forget settled records kept for
-- idempotent retries. Bounded work per call; the next call continues.
local function sweep(base, rkey, rxkey, now_ms)
  local ids = redis.call('ZRANGEBYSCORE', rxkey, '-inf', now_ms, 'LIMIT', 0, 64)
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', rkey, id)
    if rec then
      local tok, usd, day, month, state = parse_record(rec)
      if state == 'o' then
        unreserve(base, day, month, tok, usd)
      end
      redis.call('HDEL', rkey, id)
    end
    redis.call('ZREM', rxkey, id)
  end
end

-- Re-seed an absent period counter from the control plane's last known usage (Redis lost it).
-- Only for the current period and only when absent: a seed is never counted twice.
local function seed_if_absent(key, current_period, seed_period, req, tok, usd, ttl)
  if seed_period ~= '' and seed_period == current_period and redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'req', req, 'stok', tok, 'usd', usd)
    redis.call('EXPIRE', key, ttl)
    return 1
  end
  return 0
end

-- Drop window entries that left the rolling minute (score <= now - 60 s) and their tokens.
local function prune_window(wkey, wtkey, now_ms)
  local cutoff = now_ms - 60000
  local old = redis.call('ZRANGEBYSCORE', wkey, '-inf', cutoff)
  local n = #old
  if n == 0 then
    return
  end
  local freed = 0
  for i = 1, n, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, n) do
      chunk[#chunk + 1] = old[j]
    end
    local vals = redis.call('HMGET', wtkey, unpack(chunk))
    for _, v in ipairs(vals) do
      freed = freed + num(v)
    end
    redis.call('HDEL', wtkey, unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', wkey, '-inf', cutoff)
  redis.call('HINCRBY', wtkey, '_sum', istr(-freed))
end
