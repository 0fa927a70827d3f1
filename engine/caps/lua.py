"""Lua scripts of the Redis cap store. Each runs as one EVALSHA: one round trip, atomic.

KEYS of every script share one hash tag (see ``keys.py``), so they run on one cluster node.

``READ``: ``ARGV = t_us, n_counters, then per counter: n_windows, lower bounds (t - w, in us),
n_day_windows, day-field lists, want_last; then n_blocks``. ``KEYS = per counter the sorted set
and the day hash, then the block keys``. Returns, per counter, the window counts, the day sums
and the latest exposure time before ``t`` (-1 if none), then one 0/1 per block key (1 while
the block's end, its value, is after ``t``).

``RECORD``: ``KEYS = marker, then per counter the sorted set and the day hash``;
``ARGV = impression id, ts_us, day, retention_us, retention_ttl_s, day_ttl_s, marker_ttl_s``.
Returns 1 when recorded, 0 when the impression id was recorded before (idempotent).

``CHECK_RECORD``: the READ arguments (counting every recorded impression from ``t - window`` on,
also those at or after ``t``, so concurrent servers cannot both take the last slot), then
``n_checks`` and per check ``counter, kind (w, d or
g), slot in the counter's answers, threshold``, then the RECORD arguments (its keys follow the
READ keys). Records only when no check fails; returns 1, or ``-(i+1)`` for the first failing
check ``i``, or ``-(1000000+j+1)`` for a block ``j``, or 0 for a duplicate impression id.
"""

from __future__ import annotations

_COMMON = r"""
local function read_counter(zkey, dkey, upper, argv, pos, out)
  local nw = tonumber(argv[pos]); pos = pos + 1
  for i = 1, nw do
    out[#out + 1] = redis.call('ZCOUNT', zkey, '(' .. argv[pos], upper); pos = pos + 1
  end
  local nd = tonumber(argv[pos]); pos = pos + 1
  for i = 1, nd do
    local nf = tonumber(argv[pos]); pos = pos + 1
    local fields = {}
    for f = 1, nf do fields[f] = argv[pos]; pos = pos + 1 end
    local sum = 0
    if nf > 0 then
      for _, v in ipairs(redis.call('HMGET', dkey, unpack(fields))) do
        if v then sum = sum + tonumber(v) end
      end
    end
    out[#out + 1] = sum
  end
  local want_last = argv[pos]; pos = pos + 1
  if want_last == '1' then
    local r = redis.call('ZREVRANGEBYSCORE', zkey, upper, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if r[2] then out[#out + 1] = tonumber(r[2]) else out[#out + 1] = -1 end
  end
  return pos
end

-- upper: '(' .. t to see only impressions strictly before t (reads), or '+inf' to see every
-- recorded impression (atomic checks: another server's impression at t or later counts too)
local function read_all(keys, argv, base, inclusive)
  local t = argv[base]
  local upper = '(' .. t
  if inclusive then upper = '+inf' end
  local nc = tonumber(argv[base + 1])
  local pos = base + 2
  local answers = {}
  for c = 1, nc do
    local out = {}
    pos = read_counter(keys[2 * c - 1], keys[2 * c], upper, argv, pos, out)
    answers[c] = out
  end
  local nb = tonumber(argv[pos]); pos = pos + 1
  local blocks = {}
  for b = 1, nb do
    local until_us = redis.call('GET', keys[2 * nc + b])
    if until_us and tonumber(until_us) > tonumber(t) then blocks[b] = 1 else blocks[b] = 0 end
  end
  return answers, blocks, pos, 2 * nc + nb
end

local function record(keys, argv, kbase, abase)
  local member, ts, day = argv[abase], tonumber(argv[abase + 1]), argv[abase + 2]
  local retention, ttl = tonumber(argv[abase + 3]), tonumber(argv[abase + 4])
  local day_ttl, marker_ttl = tonumber(argv[abase + 5]), tonumber(argv[abase + 6])
  if not redis.call('SET', keys[kbase], '1', 'NX', 'EX', marker_ttl) then return 0 end
  local i = kbase + 1
  while i <= #keys do
    local z, d = keys[i], keys[i + 1]
    redis.call('ZADD', z, 'NX', ts, member)
    local newest = redis.call('ZREVRANGE', z, 0, 0, 'WITHSCORES')[2]
    local oldest_kept = string.format('%.0f', tonumber(newest) - retention)
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. oldest_kept)
    redis.call('EXPIRE', z, ttl)
    redis.call('HINCRBY', d, day, 1)
    redis.call('HINCRBY', d, 'L', 1)
    if redis.call('HLEN', d) > 200 then
      for _, f in ipairs(redis.call('HKEYS', d)) do
        if f ~= 'L' and tonumber(f) < tonumber(day) - 181 then redis.call('HDEL', d, f) end
      end
    end
    redis.call('EXPIRE', d, day_ttl)
    i = i + 2
  end
  return 1
end
"""

READ = (
    _COMMON
    + r"""
local answers, blocks = read_all(KEYS, ARGV, 1, false)
local flat = {}
for _, out in ipairs(answers) do for _, v in ipairs(out) do flat[#flat + 1] = v end end
for _, v in ipairs(blocks) do flat[#flat + 1] = v end
return flat
"""
)

RECORD = (
    _COMMON
    + r"""
return record(KEYS, ARGV, 1, 1)
"""
)

CHECK_RECORD = (
    _COMMON
    + r"""
local answers, blocks, pos, used = read_all(KEYS, ARGV, 1, true)
local t = tonumber(ARGV[1])
for j, b in ipairs(blocks) do
  if b == 1 then return -(1000000 + j) end
end
local nchecks = tonumber(ARGV[pos]); pos = pos + 1
for i = 1, nchecks do
  local c, kind = tonumber(ARGV[pos]), ARGV[pos + 1]
  local slot, threshold = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  pos = pos + 4
  local v = answers[c][slot]
  if kind == 'g' then  -- threshold in microseconds
    if v >= 0 and t - v < threshold then return -i end
  elseif v >= threshold then
    return -i
  end
end
return record(KEYS, ARGV, used + 1, pos)
"""
)
