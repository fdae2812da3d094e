-- Re-seed one scope's absent day and month counters (the operator's usage sync, after a Redis loss).
-- KEYS: 1 day counters, 2 month counters
-- ARGV: 1 day id, 2 month id, 3 day counter ttl s, 4 month counter ttl s,
--       5..8 month seed (period, requests, tokens, micro-USD), 9..12 day seed
-- Returns how many counters were seeded.
return seed_if_absent(KEYS[2], ARGV[2], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[4])
  + seed_if_absent(KEYS[1], ARGV[1], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[3])
