-- Shared by every PolicyBind budget script (docs/sidecar.md, "With Redis").
-- Amounts are integers: micro-dollars and tokens, at most 2^53 - 1 (exact in
-- Lua's doubles). A value that is not such an integer was not written by
-- PolicyBind: the script stops with POLICYBIND_CORRUPT before it writes
-- anything for that reservation, so the caller refuses (fail closed).
local MAX = 9007199254740991
local MINUTE = 60000000

local function num(v, what)
  if not v then return 0 end
  if type(v) ~= 'string' or not string.match(v, '^%d+$') then
    error('POLICYBIND_CORRUPT ' .. what)
  end
  local n = tonumber(v)
  if n == nil or n ~= n or n < 0 or n > MAX or math.floor(n) ~= n then
    error('POLICYBIND_CORRUPT ' .. what)
  end
  return n
end

local function sat(n)
  if n > MAX then return MAX end
  if n < 0 then return 0 end
  return n
end

local function fmt(n) return string.format('%d', sat(n)) end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A reservation record: "<micro-usd> <tokens> <1: counted in tpm> <budget key>...".
local function parse(rec, id, prefix)
  local f = {}
  for w in string.gmatch(rec, '%S+') do f[#f + 1] = w end
  if #f < 3 or (f[3] ~= '0' and f[3] ~= '1') then
    error('POLICYBIND_CORRUPT reservation ' .. id)
  end
  local r = { cost = num(f[1], 'reservation'), tokens = num(f[2], 'reservation'),
              took = f[3] == '1', keys = {} }
  for i = 4, #f do
    -- Only this owner's keys: a record may not point the script elsewhere.
    if string.sub(f[i], 1, #prefix) ~= prefix then
      error('POLICYBIND_CORRUPT reservation ' .. id)
    end
    r.keys[#r.keys + 1] = f[i]
  end
  return r
end

local function tally(key)
  local h = redis.call('HMGET', key, 'cost', 'tokens', 'requests', 'rcost', 'rtokens')
  return { cost = num(h[1], key), tokens = num(h[2], key), requests = num(h[3], key),
           rcost = num(h[4], key), rtokens = num(h[5], key) }
end

-- Takes a reservation's estimate off what its budget keys hold in flight.
-- Keys whose period ended (expired) are left alone.
local function unreserve(r)
  local tallies = {}
  for i, k in ipairs(r.keys) do
    if redis.call('EXISTS', k) == 1 then tallies[i] = tally(k) end
  end
  for i, k in ipairs(r.keys) do
    local t = tallies[i]
    if t then
      redis.call('HSET', k, 'rcost', fmt(t.rcost - r.cost), 'rtokens', fmt(t.rtokens - r.tokens))
    end
  end
end

-- Frees reservations whose deadline passed (their replica died or lost
-- Redis for longer than the reservation lease), at most 64 per call.
local function purge(res, resd, now_ms, prefix)
  local ids = redis.call('ZRANGEBYSCORE', res, '-inf', now_ms, 'LIMIT', 0, 64)
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', resd, id)
    if rec then unreserve(parse(rec, id, prefix)) end
    redis.call('ZREM', res, id)
    redis.call('HDEL', resd, id)
  end
end

-- Keeps a bookkeeping key as long as the budget keys it may point into.
local function keep(key, expire_at)
  if redis.call('PTTL', key) == -1 then
    redis.call('EXPIREAT', key, expire_at)
  else
    redis.call('EXPIREAT', key, expire_at, 'GT')
  end
end

-- The GCRA's theoretical arrival time after `amount` more at `limit` per
-- minute, or nil and the wait when it does not fit.
local function gcra(key, limit, amount, now)
  local tat = math.max(num(redis.call('GET', key), key), now)
  if amount > limit then return nil, MINUTE end
  local new = tat + math.ceil(amount * MINUTE / limit)
  if new - now > MINUTE then return nil, new - now - MINUTE end
  return new, 0
end

local function set_tat(key, tat)
  redis.call('SET', key, fmt(tat), 'PXAT', fmt(math.floor(tat / 1000) + 1000))
end
