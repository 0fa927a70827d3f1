"""Lua scripts of the Redis cap store. Each runs as one EVALSHA: one round trip, atomic.

KEYS of every script share one hash tag (see ``keys.py``), so they run on one cluster node.

**Counters.** A family's hash maps each target id (``*`` for the target any) to one binary
string, read with Redis' ``struct``: ``>I4HHI4I4`` the lifetime count, the number ``md`` of day
entries, the number ``mh`` of hour entries, the sum of the day counts and of the hour counts;
then ``md`` entries ``>HH`` (UTC day since the
epoch, its count; ascending days); then ``mh`` entries ``>I4H`` (hour since the epoch, its
count; ascending); then the impression times ``>i8`` (epoch microseconds, ascending). Counts
saturate at 65,535 a day or an hour. Each family keeps only what its readers need
(``keep.py``: the policy travels with every RECORD): every time of the last ``max_ahead`` (an
hour more for the feature families), the ``K`` latest before that (``K`` its largest exact
limit), none older than its longest exact window (except, for the campaign feature families,
the latest: a recency), and hour and day counts for as many buckets as its windows read. So
a value, and a write, does not grow with history. A window count is a search over the times
(galloping down from the newest for window bounds); a bucket window sums the hour or day
counts from its first bucket on (or takes the ones before it from the sum, whichever side is
shorter) and takes away the times at or after ``t`` (all of them are kept); reading builds no
string.

Arguments are packed so that a script splits each with one ``struct.unpack``: *numbers* are
big-endian doubles (exact integers below 2**53), *names* are their count ``>I4``, their byte
lengths ``>I2`` each, then their bytes.

``READ``: ``ARGV = t, day, hour, spec (numbers), then per group its field names (names)``.
``spec`` is fixed per request shape: ``G``, then per group ``width, K`` and per lookup of the
group ``mode, offset, nw, nd, nb, last (0 or 1), nw windows (us, ascending), nd day windows
(days; 0 lifetime), nb bucket windows (bucket hours 1 or 24, buckets)``; then the number of
block specs and per spec its group and its number of block hashes. ``KEYS`` = per lookup its
family's hash, then the block hashes, spec by spec. A lookup's mode is 0 (read every field of
its group), 1 (the same, noting the fields that have history) or 2 (read only the fields the
group's mode-1 lookup found: its family is a subset). Returns one string of big-endian doubles
(decoded as an array at once: a reply of one integer per value cost the client ~0.1 us each, 70
us for a warm read): per group, ``r`` then ``r`` values: the rows of the fields with history,
each its 1-based field index and ``width`` answers (per lookup at its offset: window counts, day
sums, bucket counts, latest time or -1); then per block spec the number of its blocked fields
and their 1-based indices. Window and bucket counts see impressions strictly before ``t``; day
sums every impression of their days. Exact for reads no earlier than ``max_ahead`` before a
counter's newest impression; a rule's count past the rule's limit is at least the limit.

``RECORD``: ``KEYS = the nm marker strings of the arrival days the dedup horizon covers
(oldest first, today's last), then per family its hash``; ``ARGV = ts, day, hour,
marker_ttl_s, policies (numbers), targets (names), fingerprint, nm``: per family its policy
(9 numbers: ``keep.Keep``) and its target id.
Returns 1 when recorded, 0 when the impression was recorded before (idempotent: its
fingerprint is among the markers, an 8-byte-aligned match; else it is appended to today's,
whose expiry is set when it is made). A counter hash's expiry is refreshed only when it has
fallen an hour short of ``ttl_s``: few EXPIRE lines in the append-only file.

``CHECK_RECORD``: the attempts of one request (one hash tag), in order, in one script:
``ARGV = n``, then per attempt ``its number of KEYS, its number of arguments, the number of
RECORD keys, the 8 RECORD arguments, the READ arguments, checks``; ``KEYS`` = per attempt its
RECORD keys, then its READ keys. ``checks`` are numbers: per check ``group, column (1-based in
the group's row), gap (0 or 1), threshold`` (a limit, or a gap in us). Counts every recorded
impression from ``t - window`` on, also those at or after ``t`` (so concurrent servers cannot
both take the last slot), the earlier attempts' included. Returns per attempt 0 for a
duplicate impression; else it records only when nothing refuses and answers 1, ``-i`` for
failing check ``i`` or -1000000 for a block.
"""

from __future__ import annotations

import struct

COUNTER_HEAD = struct.Struct(">IHHII")  # the counter header (Lua's '>I4HHI4I4')
DAY_ENTRY, HOUR_ENTRY, TIME_ENTRY = 4, 6, 8  # bytes of a day, an hour and a time entry


def counter_parts(value: bytes) -> dict[str, int]:
    """The bytes of one counter by part (header, day entries, hour entries, times), read from
    its header: what each reader's data costs (``bench_caps --breakdown``)."""
    _, days, hours, _, _ = COUNTER_HEAD.unpack_from(value)
    parts = {
        "head": COUNTER_HEAD.size,
        "days": DAY_ENTRY * days,
        "hours": HOUR_ENTRY * hours,
    }
    parts["times"] = len(value) - sum(parts.values())
    if parts["times"] < 0 or parts["times"] % TIME_ENTRY:
        raise ValueError(f"not a counter of this layout: {len(value)} bytes, header {parts}")
    return parts


_COMMON = r"""
local up, pk = struct.unpack, struct.pack
-- a counter's header: lifetime, day entries, hour entries, sum of the day counts, of the hours
local HEAD = '>I4HHI4I4'
local sub, rep, byte = string.sub, string.rep, string.byte
local call, unpack, tonumber = redis.call, unpack, tonumber

-- first index in [lo, hi) (0-based) of the times at v[o...] that is >= x (> x when strict)
local function bound(v, o, lo, hi, x, strict)
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2  -- the floor of the mean, without a call
    local s = up('>i8', v, o + 8 * mid)
    if s < x or (strict and s == x) then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- the numbers packed in a string of big-endian doubles: one call, no parsing
local function numbers(blob)
  if blob == '' then return {} end
  local out = {up('>' .. rep('d', #blob / 8), blob)}
  out[#out] = nil  -- unpack's next position
  return out
end

-- Lua's stack holds about 8,000 values: longer lists go through it in chunks
local CHUNK = 4000

-- the names packed in a string: their count (>I4), their lengths (>I2 each), then their bytes
local function names_of(blob)
  if blob == '' then return {} end
  local n = up('>I4', blob)
  local lens = {up('>' .. rep('H', math.min(n, CHUNK)), blob, 5)}
  for first = CHUNK + 1, n, CHUNK do
    local part = {up('>' .. rep('H', math.min(n - first + 1, CHUNK)), blob, 3 + 2 * first)}
    for j = 1, #part - 1 do lens[first + j - 1] = part[j] end
  end
  local out, pos = {}, 5 + 2 * n
  for i = 1, n do
    local e = pos + lens[i]
    out[i] = sub(blob, pos, e - 1)
    pos = e
  end
  return out
end

-- HMGET of any number of fields
local function hmget(key, names)
  local n = #names
  if n <= CHUNK then return call('HMGET', key, unpack(names)) end
  local out = {}
  for first = 1, n, CHUNK do
    local part = call('HMGET', key, unpack(names, first, math.min(n, first + CHUNK - 1)))
    for j = 1, #part do out[first + j - 1] = part[j] end
  end
  return out
end

-- how many of the first hi times are <= x, given that the first one is: galloping down from
-- hi (window bounds are usually near the newest times), then bisecting
local function count_le(v, o, hi, x)
  local lo, step = 1, 1  -- the answer is in [lo, hi]
  while true do
    local i = hi - step
    if i < lo then break end
    if up('>i8', v, o + 8 * i) <= x then lo = i + 1; break end
    hi, step = i, step + step
  end
  while lo < hi do
    local mid = lo + hi + 1
    mid = (mid - mid % 2) / 2
    if up('>i8', v, o + 8 * mid - 8) <= x then lo = mid else hi = mid - 1 end
  end
  return lo
end

-- the sum of the counts of a bucket list (m entries of width bytes at v[o...], format fmt:
-- key, count; ascending, distinct keys; total: the sum of all its counts) from key first on:
-- the total less the entries before first, or the entries from first on, whichever side
-- has fewer keys (a 24-hour window over 25 hours kept: one entry or two, not 24)
local function bucket_sum(v, o, m, width, fmt, first, total)
  if m == 0 then return 0 end
  local oldest = up(fmt, v, o)
  if oldest >= first then return total end
  local newest = up(fmt, v, o + width * (m - 1))
  if newest < first then return 0 end
  local sum = 0
  if first - oldest <= newest - first then
    for q = 1, m do
      local key, c = up(fmt, v, o + width * (q - 1))
      if key >= first then break end
      sum = sum + c
    end
    return total - sum
  end
  for q = m, 1, -1 do
    local key, c = up(fmt, v, o + width * (q - 1))
    if key < first then break end
    sum = sum + c
  end
  return sum
end

-- The answers of one counter v into out[p + 1 ...]: per window (ascending) the count of times
-- in (t - w, t) (or from t - w on, inclusive), per day window the day sum (every impression
-- of its days; 0 days: lifetime), per bucket window the count from its first hour or day on,
-- before t (inclusive: all), then the latest time before t (inclusive: the latest).
-- The nw windows (us) are at spec[w + 1 ...], the nd day windows after them, then nb pairs
-- (bucket hours 1 or 24, buckets).
local function answer(v, out, p, t, day_t, hour_t, spec, w, nw, nd, nb, want_last, inclusive)
  local life, md, mh, dt, ht = up(HEAD, v)
  local oh = 17 + 4 * md
  local o = oh + 6 * mh
  local n = (#v - o + 1) / 8
  local stop = n  -- the times before index stop count
  if n > 0 and not inclusive and up('>i8', v, o + 8 * n - 8) >= t then
    stop = bound(v, o, 0, n, t, false)
  end
  local hi = stop
  for i = 1, nw do  -- longer windows have lower bounds: the times below are fewer
    local low, below = t - spec[w + i], 0
    if hi > 0 and up('>i8', v, o) <= low then below = count_le(v, o, hi, low) end
    out[p + i] = stop - below
    hi = below
  end
  p, w = p + nw, w + nw
  for i = 1, nd do
    local days = spec[w + i]
    local sum = life
    if days > 0 then sum = bucket_sum(v, 17, md, 4, '>HH', day_t - days + 1, dt) end
    out[p + i] = sum
  end
  p, w = p + nd, w + nd
  for i = 1, nb do
    local hours, k = spec[w + 2 * i - 1], spec[w + 2 * i]
    local sum
    if hours == 24 then
      sum = bucket_sum(v, 17, md, 4, '>HH', day_t - k + 1, dt)
    else
      sum = bucket_sum(v, oh, mh, 6, '>I4H', hour_t - k + 1, ht)
    end
    out[p + i] = sum - (n - stop)  -- the kept times at or after t (all after its bucket's start)
  end
  if want_last and stop > 0 then out[p + nb + 1] = up('>i8', v, o + 8 * stop - 8) end
end

-- Reads a request (its arguments from argv[a], keys from keys[k]) into out: per group the
-- number of values that follow, then its rows (field index, answers). Returns out, its length,
-- per group the position of its first field's row (for atomic checks) and its default row,
-- and the blocked field indices.
local function read_all(keys, k, argv, a, inclusive)
  local t, day_t, hour_t = tonumber(argv[a]), tonumber(argv[a + 1]), tonumber(argv[a + 2])
  local spec = numbers(argv[a + 3])
  local ng, s = spec[1], 2
  local out, n, firsts, defaults, fields = {}, 0, {}, {}, {}
  for g = 1, ng do
    local width, nk = spec[s], spec[s + 1]
    s = s + 2
    local def, first_lookup = {}, s
    for c = 1, width do def[c] = 0 end
    for _ = 1, nk do  -- a lookup: mode, offset, nw, nd, nb, last, windows, days, buckets
      local width_k = spec[s + 2] + spec[s + 3] + spec[s + 4]
      if spec[s + 5] == 1 then def[spec[s + 1] + width_k + 1] = -1 end
      s = s + 6 + spec[s + 2] + spec[s + 3] + 2 * spec[s + 4]
    end
    local names = names_of(argv[a + 3 + g])
    fields[g] = names
    defaults[g] = def
    n = n + 1
    local head, at, hit_names, hits = n, {}, {}, {}
    local l = first_lookup
    for _ = 1, nk do
      local mode, off, nw, nd, nb = spec[l], spec[l + 1], spec[l + 2], spec[l + 3], spec[l + 4]
      local last = spec[l + 5]
      local vals, idx = {}, nil
      if mode == 2 then
        idx = hits
        if #hit_names > 0 then vals = hmget(keys[k], hit_names) end
      elseif #names > 0 then
        vals = hmget(keys[k], names)
      end
      for i = 1, #vals do
        local v = vals[i]
        if v then
          local f = i
          if idx then f = idx[i] end
          if mode == 1 then hit_names[#hit_names + 1] = names[i]; hits[#hits + 1] = i end
          local p = at[f]
          if not p then  -- the field's row, with default answers
            p = n + 1
            at[f] = p
            out[p] = f
            for c = 1, width do out[p + c] = def[c] end
            n = p + width
          end
          answer(v, out, p + off, t, day_t, hour_t, spec, l + 5, nw, nd, nb, last == 1, inclusive)
        end
      end
      k = k + 1
      l = l + 6 + nw + nd + 2 * nb
    end
    out[head] = n - head
    firsts[g] = at[1]
  end
  local blocked, any_blocked = {}, false  -- per block spec, its blocked field indices
  for j = 1, spec[s] do
    local bg, nb = spec[s + 2 * j - 1], spec[s + 2 * j]
    local names, flags, found = fields[bg], {}, {}
    if #names > 0 then
      for b = 0, nb - 1 do
        if call('EXISTS', keys[k + b]) == 1 then  -- blocks are rare: mostly no hash
          local vals = hmget(keys[k + b], names)
          for i = 1, #names do
            if vals[i] and tonumber(vals[i]) > t then flags[i] = true end
          end
        end
      end
      if next(flags) then  -- mostly none: no pass over every id
        for i = 1, #names do if flags[i] then found[#found + 1] = i end end
        any_blocked = true
      end
    end
    blocked[j] = found
    k = k + nb
  end
  return out, n, firsts, defaults, blocked, any_blocked
end

-- a bucket list (m entries of width bytes, format fmt: key, count; ascending keys) with one
-- more impression in bucket key (counts saturate at 65535), without the entries at or below
-- its newest key - keep
local function bump(list, m, total, width, fmt, key, keep)
  local last = -1
  if m > 0 then last = up(fmt, list, width * (m - 1) + 1) end
  if key == last then
    local _, c = up(fmt, list, width * (m - 1) + 1)
    if c < 65535 then c, total = c + 1, total + 1 end
    list = sub(list, 1, width * (m - 1)) .. pk(fmt, key, c)
  elseif key > last then
    list, m, last, total = list .. pk(fmt, key, 1), m + 1, key, total + 1
  else  -- a late impression: in place
    local out, n, done = {}, 0, false
    for q = 1, m do
      local k, c = up(fmt, list, width * (q - 1) + 1)
      if not done and k >= key then
        done = true
        if k == key then
          if c < 65535 then c, total = c + 1, total + 1 end
        else
          n = n + 1; out[n] = pk(fmt, key, 1); total = total + 1
        end
      end
      n = n + 1; out[n] = pk(fmt, k, c)
    end
    list, m = table.concat(out), n
  end
  local drop = 0
  while drop < m do
    local k, c = up(fmt, list, width * drop + 1)
    if k > last - keep then break end
    drop, total = drop + 1, total - c
  end
  if drop > 0 then list, m = sub(list, width * drop + 1), m - drop end
  return list, m, total
end

-- One more impression at ts (its day and hour) in a counter, kept by the family's policy
-- pol = {K, ahead, all, maxw, since, days, life, hours, ttl} (see RECORD).
local function write_counter(key, field, ts, day, hour, pol)
  local K, ahead, all, maxw, since = pol[1], pol[2], pol[3], pol[4], pol[5]
  local keep_days, keep_life, keep_hours, ttl = pol[6], pol[7], pol[8], pol[9]
  local v = call('HGET', key, field)
  local life, md, mh, dt, ht, days, hours, times = 0, 0, 0, 0, 0, '', '', ''
  if v then
    life, md, mh, dt, ht = up(HEAD, v)
    days = sub(v, 17, 16 + 4 * md)
    hours = sub(v, 17 + 4 * md, 16 + 4 * md + 6 * mh)
    times = sub(v, 17 + 4 * md + 6 * mh)
  end
  local n = #times / 8
  local at = n  -- after every time <= ts: late impressions go in place
  if n > 0 and up('>i8', times, 8 * n - 7) > ts then at = bound(times, 1, 0, n, ts, true) end
  times = sub(times, 1, 8 * at) .. pk('>i8', ts) .. sub(times, 8 * at + 1)
  n = n + 1
  local newest = up('>i8', times, 8 * n - 7)
  -- keep every time after newest - all, and the K latest at or before newest - ahead (the
  -- live reads' earliest t); none at or before newest - maxw (0: no limit), except, with
  -- since, the latest of those (a read's "latest before t")
  -- (no search at all when nothing can go: K or fewer times, or all of them recent)
  local oldest = up('>i8', times, 1)
  local first, pre = 0, nil
  if n > K and oldest <= newest - all then
    pre = bound(times, 1, 0, n, newest - ahead, true)
    first = math.min(bound(times, 1, 0, n, newest - all, true), math.max(pre - K, 0))
  end
  local old = first
  if maxw > 0 and oldest <= newest - maxw then
    old = math.max(first, bound(times, 1, 0, n, newest - maxw, true))
  end
  if old > 0 then
    if since == 1 then pre = pre or bound(times, 1, 0, n, newest - ahead, true) end
    if since == 1 and pre > 0 and pre - 1 < old then
      times = sub(times, 8 * pre - 7, 8 * pre) .. sub(times, 8 * old + 1)
    else
      times = sub(times, 8 * old + 1)
    end
  end
  if keep_life == 1 then life = life + 1 end
  if keep_days > 0 then days, md, dt = bump(days, md, dt, 4, '>HH', day, keep_days) end
  if keep_hours > 0 then hours, mh, ht = bump(hours, mh, ht, 6, '>I4H', hour, keep_hours) end
  call('HSET', key, field, pk(HEAD, life, md, mh, dt, ht) .. days .. hours .. times)
  -- refreshed at most once an hour (every EXPIRE is a line of the append-only file)
  if call('TTL', key) < ttl - 3600 then call('EXPIRE', key, ttl) end
end

-- whether the marker string v holds the 8-byte fingerprint fp (at an 8-byte boundary)
local function marked(v, fp)
  local at = 1
  while v do
    local p = string.find(v, fp, at, true)
    if not p then return false end
    if p % 8 == 1 then return true end
    at = p + 1
  end
  return false
end

-- whether any of the nm marker strings at keys[k ...] holds fp
local function seen(keys, k, nm, fp)
  for i = k, k + nm - 1 do
    if marked(call('GET', keys[i]), fp) then return true end
  end
  return false
end

local function record(keys, k, argv, a)
  local ts, day, hour = tonumber(argv[a]), tonumber(argv[a + 1]), tonumber(argv[a + 2])
  local fp, nm = argv[a + 6], tonumber(argv[a + 7])
  if seen(keys, k, nm, fp) then return 0 end
  local today = keys[k + nm - 1]  -- the markers of the day it arrives
  call('APPEND', today, fp)
  if call('TTL', today) < 0 then call('EXPIRE', today, argv[a + 3]) end  -- set once
  k = k + nm - 1
  local pols, targets = numbers(argv[a + 4]), names_of(argv[a + 5])
  for i = 1, #targets do
    local pol = {}
    for j = 1, 9 do pol[j] = pols[9 * (i - 1) + j] end
    write_counter(keys[k + i], targets[i], ts, day, hour, pol)
  end
  return 1
end
"""

READ = (
    _COMMON
    + r"""
local out, n, _, _, blocked = read_all(KEYS, 1, ARGV, 1, false)
for _, found in ipairs(blocked) do
  n = n + 1; out[n] = #found
  for i, f in ipairs(found) do out[n + i] = f end
  n = n + #found
end
-- one string of doubles: the client reads it as an array at once, instead of one integer reply
-- each (Lua's stack holds about 8,000 values: packed in chunks)
local parts, full = {}, '>' .. rep('d', 200)
for i = 1, n, 200 do
  local j = math.min(n, i + 199)
  local format = full
  if j - i < 199 then format = '>' .. rep('d', j - i + 1) end
  parts[#parts + 1] = pk(format, unpack(out, i, j))
end
return table.concat(parts)
"""
)

RECORD = (
    _COMMON
    + r"""
return record(KEYS, 1, ARGV, 1)
"""
)

CHECK_RECORD = (
    _COMMON
    + r"""
-- one attempt: its keys from keys[k], its na arguments from argv[a]
local function check_record(keys, k, argv, a, na)
  if seen(keys, k, tonumber(argv[a + 8]), argv[a + 7]) then return 0 end  -- recorded before
  local nrk = tonumber(argv[a])
  local t = tonumber(argv[a + 9])
  local out, _, firsts, defaults, _, any_blocked = read_all(keys, k + nrk, argv, a + 9, true)
  if any_blocked then return -1000000 end
  local checks = numbers(argv[a + na - 1])
  for i = 1, #checks / 4 do
    local g, col, gap = checks[4 * i - 3], checks[4 * i - 2], checks[4 * i - 1] == 1
    local threshold = checks[4 * i]
    local v = defaults[g][col]
    if firsts[g] then v = out[firsts[g] + col] end
    if gap then
      if v >= 0 and t - v < threshold then return -i end
    elseif v >= threshold then
      return -i
    end
  end
  return record(keys, k, argv, a + 1)
end

local answers, k, a = {}, 1, 2
for j = 1, tonumber(ARGV[1]) do  -- the attempts in order: each sees the ones before it
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  answers[j] = check_record(KEYS, k, ARGV, a + 2, na)
  k, a = k + nk, a + 2 + na
end
return answers
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
