-- Settles (ARGV[5] == '1') or releases (ARGV[5] == '0') one reservation.
-- KEYS: 1 reservations, 2 records, 3 settled ids, 4 tpm GCRA, 5.. budget keys
--       (the ones the reservation was recorded in).
-- ARGV: 1 owner key prefix, 2 id, 3 actual micro-usd, 4 actual tokens,
--       5 settle?, 6 tokens/min (0: none), then per budget key: expire-at (unix s).
-- Returns 0 when done, 1 when this id was already done (a retry), 2 when the
-- reservation had expired (settled amounts are still counted).
local prefix, id = ARGV[1], ARGV[2]
local cost, tokens = num(ARGV[3], 'cost'), num(ARGV[4], 'tokens')
local settle = ARGV[5] == '1'
local tpm = num(ARGV[6], 'tpm')
local now = now_us()
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - 600000)
if redis.call('ZSCORE', KEYS[3], id) then return 1 end
purge(KEYS[1], KEYS[2], now_ms, prefix)

-- Read and check everything before the first write.
local rec = redis.call('HGET', KEYS[2], id)
local r = nil
if rec then r = parse(rec, id, prefix) end
local tallies = {}
if settle then
  for i = 5, #KEYS do tallies[i] = tally(KEYS[i]) end
end
local tat = nil
if r and r.took and tpm > 0 then tat = math.max(num(redis.call('GET', KEYS[4]), KEYS[4]), now) end

if r then
  unreserve(r)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
if settle then
  for i = 5, #KEYS do
    local t = tallies[i]
    redis.call('HSET', KEYS[i], 'cost', fmt(t.cost + cost), 'tokens', fmt(t.tokens + tokens),
      'requests', fmt(t.requests + 1))
    redis.call('EXPIREAT', KEYS[i], ARGV[6 + i - 4])
  end
end
if tat then
  -- Refund an overestimate, charge an underestimate (by at most an hour).
  local delta = -r.tokens
  if settle then delta = tokens - r.tokens end
  local new = tat + math.ceil(delta * MINUTE / tpm)
  set_tat(KEYS[4], math.min(math.max(new, now), now + 60 * MINUTE))
end
redis.call('ZADD', KEYS[3], now_ms, id)
redis.call('PEXPIRE', KEYS[3], 600000)
if r then return 0 end
return 2
