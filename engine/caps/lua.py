"""Lua scripts of the Redis cap store. Each runs as one EVALSHA: one round trip, atomic.

KEYS of every script share one hash tag (see ``keys.py``), so they run on one cluster node.
Per family lookup the first key is the recent-impressions store: for a target id family a hash
(field = target id, value = comma-separated impression times), for the target "any" a sorted
set (member = impression id, score = time); then the day-count hash and the lifetime hash.

``READ``: ``ARGV = t, n_lookups, then per lookup: kind (T for target ids, A for any), n_fields,
fields, n_windows, lower bounds (t - w, us), n_day_windows, first days (or L for lifetime),
want_last; then n_block_fields, the fields, n_block_keys``; ``KEYS = per lookup its three
keys, then the block hashes``. Returns per lookup and field the window counts, day sums and
latest time (-1: none), then per block hash and field 1 while the block's end is after ``t``,
else 0. Counts
see impressions strictly before ``t``.

``RECORD``: ``KEYS = marker, then per family its three keys``; ``ARGV = impression id, ts, day,
retention_us, ttl_s, day_ttl_s, marker_ttl_s, then per family: kind and field``. Returns 1 when
recorded, 0 when the impression id was recorded before (idempotent).

``CHECK_RECORD``: the READ arguments (but counting every recorded impression from ``t - window``
on, also those at or after ``t``, so concurrent servers cannot both take the last slot), then
``n_checks`` and per check ``lookup, kind (w, d or g), answer slot, threshold`` (gaps in us),
then the RECORD arguments (its keys follow the READ keys). Records only when nothing refuses;
returns 1, ``-(i+1)`` for failing check ``i``, ``-1000000`` for a block, 0 for a duplicate.
"""

from __future__ import annotations

_COMMON = r"""
local function times_of(list)
  local out = {}
  if list then for s in string.gmatch(list, '[^,]+') do out[#out + 1] = tonumber(s) end end
  return out
end

local function read_lookup(keys, k, argv, pos, t, inclusive, out)
  local kind = argv[pos]; pos = pos + 1
  local nf = tonumber(argv[pos]); pos = pos + 1
  local fields = {}
  for i = 1, nf do fields[i] = argv[pos]; pos = pos + 1 end
  local nw = tonumber(argv[pos]); pos = pos + 1
  local lows = {}
  for i = 1, nw do lows[i] = tonumber(argv[pos]); pos = pos + 1 end
  local nd = tonumber(argv[pos]); pos = pos + 1
  local firsts = {}
  local need_days, need_life = false, false
  for i = 1, nd do
    firsts[i] = argv[pos]; pos = pos + 1
    if firsts[i] == 'L' then need_life = true else need_days = true end
  end
  local want_last = argv[pos] == '1'; pos = pos + 1
  local rkey, dkey, lkey = keys[k], keys[k + 1], keys[k + 2]
  local days, life = {}, {}
  if need_days then days = redis.call('HMGET', dkey, unpack(fields)) end
  if need_life then life = redis.call('HMGET', lkey, unpack(fields)) end
  local recent = {}
  if kind == 'T' and (nw > 0 or want_last) then
    recent = redis.call('HMGET', rkey, unpack(fields))
  end
  local upper = '(' .. string.format('%.0f', t)
  if inclusive then upper = '+inf' end
  for f = 1, nf do
    -- no history: every answer is 0 (last: -1), so nothing is emitted; the caller fills defaults
    local seen = kind == 'A' or recent[f] or days[f] or life[f]
    if seen then
      local counts, last = {}, -1
      if kind == 'A' then
        for i = 1, nw do
          counts[i] = redis.call('ZCOUNT', rkey, '(' .. string.format('%.0f', lows[i]), upper)
        end
        if want_last then
          local r = redis.call('ZREVRANGEBYSCORE', rkey, upper, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
          if r[2] then last = tonumber(r[2]) end
        end
      else
        for i = 1, nw do counts[i] = 0 end
        for _, ts in ipairs(times_of(recent[f])) do
          if inclusive or ts < t then
            for i = 1, nw do if ts > lows[i] then counts[i] = counts[i] + 1 end end
            if ts > last then last = ts end
          end
        end
      end
      local n = out.n
      out[n + 1] = f
      n = n + 1
      for i = 1, nw do out[n + i] = counts[i] end
      n = n + nw
      for i = 1, nd do
        if firsts[i] == 'L' then
          out[n + i] = tonumber(life[f] or 0)
        else
          local sum, first = 0, tonumber(firsts[i])
          if days[f] then
            for d, c in string.gmatch(days[f], '(%d+):(%d+)') do
              if tonumber(d) >= first then sum = sum + tonumber(c) end
            end
          end
          out[n + i] = sum
        end
      end
      n = n + nd
      if want_last then n = n + 1; out[n] = last end
      out.n = n
    end
  end
  return pos
end

local function read_all(keys, argv, inclusive)
  local t = tonumber(argv[1])
  local nl = tonumber(argv[2])
  local pos = 3
  local per_lookup = {}
  for l = 1, nl do
    local out = {n = 0}
    pos = read_lookup(keys, 3 * l - 2, argv, pos, t, inclusive, out)
    per_lookup[l] = out
  end
  local nbf = tonumber(argv[pos]); pos = pos + 1
  local bfields = {}
  for i = 1, nbf do bfields[i] = argv[pos]; pos = pos + 1 end
  local nbk = tonumber(argv[pos]); pos = pos + 1
  local blocks = {}
  for b = 1, nbk do
    if nbf > 0 then
      for _, v in ipairs(redis.call('HMGET', keys[3 * nl + b], unpack(bfields))) do
        if v and tonumber(v) > t then blocks[#blocks + 1] = 1 else blocks[#blocks + 1] = 0 end
      end
    end
  end
  return per_lookup, blocks, pos, 3 * nl + nbk
end

local function record(keys, argv, kbase, abase)
  local member, ts, day = argv[abase], tonumber(argv[abase + 1]), argv[abase + 2]
  local retention, ttl = tonumber(argv[abase + 3]), tonumber(argv[abase + 4])
  local day_ttl, marker_ttl = tonumber(argv[abase + 5]), tonumber(argv[abase + 6])
  if not redis.call('SET', keys[kbase], '1', 'NX', 'EX', marker_ttl) then return 0 end
  local stamp = string.format('%.0f', ts)
  local pos, k = abase + 7, kbase + 1
  while k <= #keys do
    local kind, field, long = argv[pos], argv[pos + 1], argv[pos + 2] == '1'
    local r, d, l = keys[k], keys[k + 1], keys[k + 2]
    if kind == 'A' then
      redis.call('ZADD', r, 'NX', ts, member)
      local newest = tonumber(redis.call('ZREVRANGE', r, 0, 0, 'WITHSCORES')[2])
      redis.call('ZREMRANGEBYSCORE', r, '-inf', '(' .. string.format('%.0f', newest - retention))
    else
      local list = redis.call('HGET', r, field)
      local oldest = list and tonumber(string.match(list, '^(%d+)'))
      if not list then
        list = stamp
      elseif oldest < ts - retention then  -- trim only when the oldest has left the retention
        local keep = {}
        for _, x in ipairs(times_of(list)) do
          if x >= ts - retention then keep[#keep + 1] = string.format('%.0f', x) end
        end
        keep[#keep + 1] = stamp
        list = table.concat(keep, ',')
      else
        list = list .. ',' .. stamp
      end
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
local per_lookup, blocks = read_all(KEYS, ARGV, false)
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
local per_lookup, blocks, pos, used = read_all(KEYS, ARGV, true)
local t = tonumber(ARGV[1])
for _, b in ipairs(blocks) do
  if b == 1 then return -1000000 end
end
local nchecks = tonumber(ARGV[pos]); pos = pos + 1
for i = 1, nchecks do
  local l, kind = tonumber(ARGV[pos]), ARGV[pos + 1]
  local slot, threshold = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  pos = pos + 4
  local v = per_lookup[l][slot + 1]  -- answers of the one field follow its index
  if v == nil then v = 0; if kind == 'g' then v = -1 end end
  if kind == 'g' then
    if v >= 0 and t - v < threshold then return -i end
  elseif v >= threshold then
    return -i
  end
end
return record(KEYS, ARGV, used + 1, pos)
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
