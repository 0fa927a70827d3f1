"""Lua scripts of the Redis cap store. Each runs as one EVALSHA: one round trip, atomic.

KEYS of every script share one hash tag (see ``keys.py``), so they run on one cluster node.
Per family lookup the first key is the recent-impressions store: for a target id family a hash
(field = target id, value = comma-separated impression times), for the target "any" a sorted
set (member = impression id, score = time); then the day-count hash and the lifetime hash.

``READ``: ``ARGV[1]`` is the request as JSON (decoded by Redis' cjson; one argument instead of
hundreds): ``t``, ``fs`` (the distinct field lists), ``lk`` (per lookup: ``k`` T for target
ids or A for any, ``f`` its field list, ``w`` window lower bounds ``t - w`` in us, ``d`` first
days, -1 for lifetime, ``l`` 1 if the latest time is wanted), ``bf`` (the blocks' field list,
-1 for none) and ``nb``; ``KEYS = per lookup its three keys, then the block hashes``. Returns
per lookup the number of values that follow and, for each field with history, its 1-based
index and answers (window counts, day sums, latest time or -1); then per block hash and field
1 while the block's end is after ``t``. Counts see impressions strictly before ``t``.

``RECORD``: ``KEYS = marker, then per family its three keys``; ``ARGV = impression id, ts, day,
retention_us, ttl_s, day_ttl_s, marker_ttl_s, then per family: kind and field``. Returns 1 when
recorded, 0 when the impression id was recorded before (idempotent).

``CHECK_RECORD``: ``ARGV[1]`` the READ request, but counting every recorded impression from
``t - window`` on, also those at or after ``t`` (so concurrent servers cannot both take the last
slot); ``ARGV[2]`` the checks as JSON ``[[lookup, kind (w, d or g), answer slot, threshold]]``
(gap thresholds in us); then the RECORD arguments (its keys follow the READ keys). Records only
when nothing refuses; returns 1, ``-(i+1)`` for failing check ``i``, ``-1000000`` for a block,
0 for a duplicate impression id.
"""

from __future__ import annotations

_COMMON = r"""
-- A target's recent impressions: a string of sorted, fixed-width (16-digit, zero-padded)
-- epoch-microsecond stamps; fixed width makes string order numeric order, so counting a window
-- is two binary searches with string comparisons, and no number is parsed.
local W = 16
local function stamp(x) return string.format('%016.0f', x) end
local function record_at(list, i) return string.sub(list, (i - 1) * W + 1, i * W) end
-- first record index with record >= key (strict = false) or > key (strict = true); n+1 if none
local function search(list, key, strict)
  local lo, hi = 1, #list / W + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = record_at(list, mid)
    if r < key or (strict and r == key) then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function read_lookup(keys, k, req, lk, inclusive, out)
  local t, fields, lows, firsts = req.t, req.fs[lk.f + 1], lk.w, lk.d
  local nf, nw, nd, want_last = #fields, #lows, #firsts, lk.l == 1
  local need_days, need_life = false, false
  for i = 1, nd do
    if firsts[i] < 0 then need_life = true else need_days = true end
  end
  local rkey, dkey, lkey = keys[k], keys[k + 1], keys[k + 2]
  local days, life, recent = {}, {}, {}
  if need_days then days = redis.call('HMGET', dkey, unpack(fields)) end
  if need_life then life = redis.call('HMGET', lkey, unpack(fields)) end
  if lk.k == 'T' and (nw > 0 or want_last) then
    recent = redis.call('HMGET', rkey, unpack(fields))
  end
  local upper = '(' .. string.format('%.0f', t)
  if inclusive then upper = '+inf' end
  local t_stamp, low_stamps = stamp(t), {}
  for i = 1, nw do low_stamps[i] = stamp(lows[i]) end
  local is_any = lk.k == 'A'
  local n = out.n
  for f = 1, nf do
    -- no history: every answer is 0 (last: -1), so nothing is emitted; the caller fills defaults
    if is_any or recent[f] or days[f] or life[f] then
      local counts, last = {}, -1
      if is_any then
        for i = 1, nw do
          counts[i] = redis.call('ZCOUNT', rkey, '(' .. string.format('%.0f', lows[i]), upper)
        end
        if want_last then
          local r = redis.call('ZREVRANGEBYSCORE', rkey, upper, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
          if r[2] then last = tonumber(r[2]) end
        end
      else
        local list = recent[f] or ''
        local stop = #list / W + 1  -- records before stop are counted
        if not inclusive then stop = search(list, t_stamp, false) end
        for i = 1, nw do counts[i] = stop - search(list, low_stamps[i], true) end
        if stop > 1 then last = tonumber(record_at(list, stop - 1)) end
      end
      n = n + 1; out[n] = f
      for i = 1, nw do out[n + i] = counts[i] end
      n = n + nw
      for i = 1, nd do
        local sum = 0
        if firsts[i] < 0 then
          sum = tonumber(life[f] or 0)
        elseif days[f] then
          for d, c in string.gmatch(days[f], '(%d+):(%d+)') do
            if tonumber(d) >= firsts[i] then sum = sum + tonumber(c) end
          end
        end
        out[n + i] = sum
      end
      n = n + nd
      if want_last then n = n + 1; out[n] = last end
    end
  end
  out.n = n
end

-- req (JSON): t, fs (distinct field lists), lk (lookups: k = T or A, f = field list index,
-- w = window lower bounds, d = first days (-1: lifetime), l = 1 if the latest time is wanted),
-- bf (field list of the blocks, -1: none), nb (number of block hashes, after the lookup keys).
-- inclusive: count every recorded impression from t - window on (atomic checks), else only
-- those strictly before t (reads).
local function read_all(keys, req, inclusive)
  local per_lookup = {}
  for l, lk in ipairs(req.lk) do
    local out = {n = 0}
    read_lookup(keys, 3 * l - 2, req, lk, inclusive, out)
    per_lookup[l] = out
  end
  local blocks = {}
  local nl = #req.lk
  if req.bf >= 0 then
    local bfields = req.fs[req.bf + 1]
    for b = 1, req.nb do
      for _, v in ipairs(redis.call('HMGET', keys[3 * nl + b], unpack(bfields))) do
        if v and tonumber(v) > req.t then blocks[#blocks + 1] = 1 else blocks[#blocks + 1] = 0 end
      end
    end
  end
  return per_lookup, blocks, 3 * nl + req.nb
end

local function record(keys, argv, kbase, abase)
  local member, ts, day = argv[abase], tonumber(argv[abase + 1]), argv[abase + 2]
  local retention, ttl = tonumber(argv[abase + 3]), tonumber(argv[abase + 4])
  local day_ttl, marker_ttl = tonumber(argv[abase + 5]), tonumber(argv[abase + 6])
  if not redis.call('SET', keys[kbase], '1', 'NX', 'EX', marker_ttl) then return 0 end
  local s = stamp(ts)
  local pos, k = abase + 7, kbase + 1
  while k <= #keys do
    local kind, field, long = argv[pos], argv[pos + 1], argv[pos + 2] == '1'
    local r, d, l = keys[k], keys[k + 1], keys[k + 2]
    if kind == 'A' then
      redis.call('ZADD', r, 'NX', ts, member)
      local newest = tonumber(redis.call('ZREVRANGE', r, 0, 0, 'WITHSCORES')[2])
      redis.call('ZREMRANGEBYSCORE', r, '-inf', '(' .. string.format('%.0f', newest - retention))
    else
      local list = redis.call('HGET', r, field) or ''
      local at = search(list, s, true)  -- keep the stamps sorted (late events go in place)
      list = string.sub(list, 1, (at - 1) * W) .. s .. string.sub(list, (at - 1) * W + 1)
      local newest = tonumber(record_at(list, #list / W))
      local first = search(list, stamp(newest - retention), false)  -- drop what left retention
      if first > 1 then list = string.sub(list, (first - 1) * W + 1) end
      redis.call('HSET', r, field, list)
    end
    redis.call('EXPIRE', r, ttl)
    if long then
      local pairs_, kept, found = redis.call('HGET', d, field), {}, false
      if pairs_ then
        for dd, c in string.gmatch(pairs_, '(%d+):(%d+)') do
          if dd == day then c = tostring(tonumber(c) + 1); found = true end
          if tonumber(dd) > tonumber(day) - 181 then kept[#kept + 1] = dd .. ':' .. c end
        end
      end
      if not found then kept[#kept + 1] = day .. ':1' end
      redis.call('HSET', d, field, table.concat(kept, ','))
      redis.call('EXPIRE', d, day_ttl)
      redis.call('HINCRBY', l, field, 1)
      redis.call('EXPIRE', l, day_ttl)
    end
    pos, k = pos + 3, k + 3
  end
  return 1
end
"""

READ = (
    _COMMON
    + r"""
local per_lookup, blocks = read_all(KEYS, cjson.decode(ARGV[1]), false)
local flat, n = {}, 0
for _, out in ipairs(per_lookup) do
  n = n + 1; flat[n] = out.n
  for i = 1, out.n do flat[n + i] = out[i] end
  n = n + out.n
end
for _, v in ipairs(blocks) do n = n + 1; flat[n] = v end
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
local req = cjson.decode(ARGV[1])
local per_lookup, blocks, used = read_all(KEYS, req, true)
for _, b in ipairs(blocks) do
  if b == 1 then return -1000000 end
end
for i, chk in ipairs(cjson.decode(ARGV[2])) do
  local l, kind, slot, threshold = chk[1], chk[2], chk[3], chk[4]
  local v = per_lookup[l][slot + 1]  -- answers of the one field follow its index
  if v == nil then v = 0; if kind == 'g' then v = -1 end end
  if kind == 'g' then  -- threshold in microseconds
    if v >= 0 and req.t - v < threshold then return -i end
  elseif v >= threshold then
    return -i
  end
end
return record(KEYS, ARGV, used + 1, 3)
"""
)

BLOCK = r"""
-- KEYS[1]: a block hash; ARGV: field, end (us), ttl_s. Keeps the later end.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
