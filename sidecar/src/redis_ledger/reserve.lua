-- KEYS: 1 reservations (zset id -> deadline ms), 2 records (hash id -> record),
--       3 settled ids (zset), 4 rpm GCRA, 5 tpm GCRA, 6..5+n the n budget keys
--       (a calendar period, or a rolling window's current bucket), then the
--       earlier buckets of each rolling window, budget after budget.
-- ARGV: 1 owner key prefix, 2 id, 3 lease ms, 4 micro-usd, 5 tokens,
--       6 requests/min (0: none), 7 tokens/min (0: none), 8 keep-until (unix s),
--       9 n, then per budget key: max micro-usd (-1: none), max tokens (-1:
--       none), expire-at (unix s), number of earlier bucket keys (0: calendar).
-- Returns {0} when recorded, {1, 0, wait_us} rpm, {2, 0, wait_us} tpm,
-- {3, budget index (1-based), 0} budget.
local prefix, id = ARGV[1], ARGV[2]
local lease = num(ARGV[3], 'lease')
local cost, tokens = num(ARGV[4], 'cost'), num(ARGV[5], 'tokens')
local rpm, tpm = num(ARGV[6], 'rpm'), num(ARGV[7], 'tpm')
local keep_until = num(ARGV[8], 'keep')
local n = num(ARGV[9], 'budgets')
local now = now_us()
local now_ms = math.floor(now / 1000)
purge(KEYS[1], KEYS[2], now_ms, prefix)

-- Check everything first: a refused request leaves no trace.
local rpm_tat, tpm_tat, wait
if rpm > 0 then
  rpm_tat, wait = gcra(KEYS[4], rpm, 1, now)
  if not rpm_tat then return { 1, 0, wait } end
end
if tpm > 0 then
  tpm_tat, wait = gcra(KEYS[5], tpm, tokens, now)
  if not tpm_tat then return { 2, 0, wait } end
end
local budgets = {}
local earlier_key = 6 + n
for i = 6, 5 + n do
  local a = 10 + (i - 6) * 4
  local max_cost, max_tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local t = tally(KEYS[i])
  -- A rolling window also counts its earlier buckets, settled and in flight.
  local before_cost, before_tokens = 0, 0
  for _ = 1, num(ARGV[a + 3], 'earlier') do
    local e = tally(KEYS[earlier_key])
    before_cost = before_cost + e.cost + e.rcost
    before_tokens = before_tokens + e.tokens + e.rtokens
    earlier_key = earlier_key + 1
  end
  -- A request priced at zero never takes a cost budget over.
  if max_cost >= 0 and cost > 0 and before_cost + t.cost + t.rcost + cost > max_cost then
    return { 3, i - 5, 0 }
  end
  if max_tokens >= 0 and before_tokens + t.tokens + t.rtokens + tokens > max_tokens then
    return { 3, i - 5, 0 }
  end
  budgets[#budgets + 1] = { key = KEYS[i], t = t, expire_at = ARGV[a + 2] }
end

if rpm_tat then set_tat(KEYS[4], rpm_tat) end
if tpm_tat then set_tat(KEYS[5], tpm_tat) end
local names = {}
for _, b in ipairs(budgets) do
  redis.call('HSET', b.key, 'rcost', fmt(b.t.rcost + cost), 'rtokens', fmt(b.t.rtokens + tokens))
  redis.call('EXPIREAT', b.key, b.expire_at)
  names[#names + 1] = b.key
end
local took = '0'
if tpm_tat then took = '1' end
redis.call('HSET', KEYS[2], id, fmt(cost) .. ' ' .. fmt(tokens) .. ' ' .. took .. ' ' .. table.concat(names, ' '))
redis.call('ZADD', KEYS[1], now_ms + lease, id)
keep(KEYS[1], keep_until)
keep(KEYS[2], keep_until)
return { 0, 0, 0 }
