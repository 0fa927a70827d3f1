"""Lua scripts of the Redis cap store (key layout 8). Each runs as one EVALSHA: one round trip,
atomic. The KEYS of every script share one hash tag (``keys.py``), so they run on one cluster
node.

Redis keeps a household's parts (``eventlog.py`` has their bytes) and appends to them; the
client reads them whole and computes every answer. ``PARTS`` below are a tag's keys in the
order of ``KeySpace.parts``: the log, the dictionary, the tuples, the day counts, the
generation, the log's tail. An impression is appended to the tail (at most ``TAIL_BYTES``,
kept at its size); a full tail is appended to the log, which is set again at its size then:
so a write copies the tail, and the whole log only once every 64 impressions, and the log
(the tail after it) reads as one.

``READ``: ``KEYS = PARTS, then block hashes``. Returns the four parts' strings (the log with its
tail), the generation and per block hash its fields and values (``HGETALL``).

``RECORD`` (one impression): ``KEYS = PARTS, then the nm marker strings of the arrival days
the dedup horizon covers (oldest first, today's last)``; ``ARGV = fingerprint, nm,
marker_ttl_s, time (8 bytes, little-endian epoch microseconds), ids (10 fingerprints of
``FP_BYTES``, zero bytes for null: user, device, ad, creative, campaign, advertiser, category,
competition label, touchpoint, slot), ttl_s, due_us``. Returns 0 when the impression was
recorded before (its fingerprint is among the markers, a match at an entry boundary), else 1 after
appending it (new ids to the dictionary, new tuples, the event; the fingerprint to today's
markers, whose expiry is set when the string is made), or 3 when the log's first event is
older than ``due_us`` (a fold is due). The parts' expiry is refreshed only when the log has
fallen an hour short of ``ttl_s``: few EXPIRE lines in the append-only file.

``COMMIT`` (a request's reservations, checked by the client on a snapshot): ``KEYS = PARTS,
then the block hashes the snapshot read, then the nm marker strings``; ``ARGV = log length,
generation (the snapshot's), nb, nm, marker_ttl_s, ttl_s, due_us, n, then per attempt its
fingerprint, time, ids, whether the client took it for a retry (0/1) and whether it admits it
(0/1)``. If the log and the generation are the snapshot's and every attempt is a retry exactly
when the client took it for one, records the admitted ones that are not retries and returns
``{1, due}`` (due: 1 when a fold is due); else records nothing and returns ``{0, the READ
reply's values..., retries}`` (``retries``: per attempt '1' or '0'), a fresh snapshot to check
again.

``FOLD``: ``KEYS = PARTS``; ``ARGV = log length, generation (the snapshot's), ttl_s, then the
four new parts``. Replaces the parts (an empty one is deleted) and raises the generation when
the snapshot is still current; returns 1, else 0 (someone wrote meanwhile: fold later).

``BLOCK``: ``KEYS = a block hash, the tag's generation``; ``ARGV = field, end (us), ttl_s,
tag ttl_s``. Keeps the later end and raises the generation.
"""

from __future__ import annotations

from engine.caps.keys import FP_BYTES

_COMMON = r"""
local call, sub, find = redis.call, string.sub, string.find
local up, pk = struct.unpack, struct.pack
local FP = @FP@  -- the bytes of a fingerprint or a marker (keys.FP_BYTES)
local ZERO = string.rep('\0', FP)
local NP, TAIL, EVENT = 6, 6, 12  -- the parts, the tail's, an event's bytes
local TAIL_BYTES = 64 * EVENT  -- the tail joins the log at 64 impressions

-- the position (1-based) of the entry of width w equal to s in v, at an entry boundary; 0: none
local function position(v, s, w)
  local at = 1
  while true do
    local p = find(v, s, at, true)
    if not p then return 0 end
    if (p - 1) % w == 0 then return (p - 1) / w + 1 end
    at = p + 1
  end
end

-- whether any of the nm marker strings at keys[k ...] holds the fingerprint fp
local function seen(keys, k, nm, fp)
  for i = k, k + nm - 1 do
    local v = call('GET', keys[i])
    if v and position(v, fp, FP) > 0 then return true end
  end
  return false
end

local function read(keys, nb)
  local out = {}
  for i = 1, 4 do out[i] = call('GET', keys[i]) or '' end
  out[1] = out[1] .. (call('GET', keys[TAIL]) or '')
  out[5] = call('GET', keys[5]) or '0'
  for i = 1, nb do out[5 + i] = call('HGETALL', keys[NP + i]) end
  return out
end

-- the bytes of the log with its tail (a snapshot's version, with the generation)
local function length(keys)
  return call('STRLEN', keys[1]) + call('STRLEN', keys[TAIL])
end

-- 1 when the log's first event is older than due (a fold is due), else 0
local function due(keys, due_us)
  local first = call('GETRANGE', keys[1], 0, 7)
  if #first < 8 then first = call('GETRANGE', keys[TAIL], 0, 7) end
  if #first == 8 and up('<i8', first) < due_us then return 1 end
  return 0
end

-- set an appended string again at its size: APPEND leaves up to as much room again (Redis
-- doubles a growing string), which would take half of a household's memory. Only the APPEND
-- goes to the AOF and the replicas (the same value: they keep its room until this runs there)
local function exact(key)
  redis.set_repl(redis.REPL_NONE)
  call('SET', key, call('GET', key), 'KEEPTTL')
  redis.set_repl(redis.REPL_ALL)
end

-- the coder of entries of width w in the string at key: an entry's code is its position
-- (1-based) there, a new one's after the others in the order first asked for; and a function
-- that appends the new ones (what names them in an error past 65535)
local function coder(key, w, what)
  local v = call('GET', key) or ''
  local count, new = #v / w, {}
  local function code(s)
    local found = position(v, s, w)
    if found > 0 then return found end
    for j, t in ipairs(new) do
      if t == s then return count + j end
    end
    new[#new + 1] = s
    return count + #new
  end
  local function save()
    if count + #new > 65535 then return error('cap store: more than 65535 ' .. what) end
    if #new > 0 then
      call('APPEND', key, table.concat(new))
      exact(key)
    end
  end
  return code, save
end

-- append one impression: its ids to the dictionary, its tuples, the event (see eventlog.Writer)
local function append(keys, time, ids, ttl)
  local id, save_ids = coder(keys[2], FP, 'ids in one household')
  local function intern(i)
    local fp = sub(ids, FP * (i - 1) + 1, FP * i)
    if fp == ZERO then return 0 end
    return id(fp)
  end
  local user, device = intern(1), intern(2)
  local ad = {}
  for i = 3, 8 do ad[i - 2] = intern(i) end
  local tp, slot = intern(9), intern(10)
  save_ids()
  local tuple, save_tuples = coder(keys[3], 12, 'ads in one household')
  local a = tuple(pk('<HHHHHH', ad[1], ad[2], ad[3], ad[4], ad[5], ad[6]))
  local c = tuple(pk('<HHHHHH', user, device, tp, slot, 0, 0))
  save_tuples()
  local tail = call('APPEND', keys[TAIL], time .. pk('<HH', a, c))
  if tail >= TAIL_BYTES then  -- the tail joins the log
    if call('APPEND', keys[1], call('GET', keys[TAIL])) == tail then
      call('EXPIRE', keys[1], ttl)  -- a new log lives as the rest
    else
      exact(keys[1])
    end
    call('DEL', keys[TAIL])
  elseif tail == EVENT then  -- a new tail lives as the log
    call('EXPIRE', keys[TAIL], ttl)
  else
    exact(keys[TAIL])
  end
  if call('TTL', keys[2]) < ttl - 3600 then
    for i = 1, NP do call('EXPIRE', keys[i], ttl) end
  end
end

local function mark(today, fp, marker_ttl)
  call('APPEND', today, fp)
  exact(today)
  if call('TTL', today) < 0 then call('EXPIRE', today, marker_ttl) end  -- set once
end
""".replace("@FP@", str(FP_BYTES))

READ = (
    _COMMON
    + r"""
return read(KEYS, #KEYS - NP)
"""
)

RECORD = (
    _COMMON
    + r"""
local fp, nm = ARGV[1], tonumber(ARGV[2])
if seen(KEYS, NP + 1, nm, fp) then return 0 end
mark(KEYS[NP + nm], fp, ARGV[3])
append(KEYS, ARGV[4], ARGV[5], tonumber(ARGV[6]))
return 1 + 2 * due(KEYS, tonumber(ARGV[7]))
"""
)

COMMIT = (
    _COMMON
    + r"""
local nb, nm = tonumber(ARGV[3]), tonumber(ARGV[4])
local marker_ttl, ttl, due_us, n = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local current = length(KEYS) == tonumber(ARGV[1])
current = current and (call('GET', KEYS[5]) or '0') == ARGV[2]
local retries, mismatch = {}, false
for i = 1, n do
  local a = 9 + 5 * (i - 1)
  local retry = seen(KEYS, NP + 1 + nb, nm, ARGV[a])
  retries[i] = retry and '1' or '0'
  if retries[i] ~= ARGV[a + 3] then mismatch = true end
end
if not current or mismatch then
  local out = read(KEYS, nb)
  table.insert(out, 1, 0)
  out[#out + 1] = table.concat(retries)
  return out
end
local today = KEYS[NP + nb + nm]
for i = 1, n do
  local a = 9 + 5 * (i - 1)
  if ARGV[a + 3] == '0' and ARGV[a + 4] == '1' then
    mark(today, ARGV[a], marker_ttl)
    append(KEYS, ARGV[a + 1], ARGV[a + 2], ttl)
  end
end
return {1, due(KEYS, due_us)}
"""
)

FOLD = (
    _COMMON
    + r"""
if length(KEYS) ~= tonumber(ARGV[1]) or (call('GET', KEYS[5]) or '0') ~= ARGV[2] then
  return 0
end
call('DEL', KEYS[TAIL])
local ttl = tonumber(ARGV[3])
for i = 1, 4 do
  if ARGV[3 + i] == '' then
    call('DEL', KEYS[i])
  else
    call('SET', KEYS[i], ARGV[3 + i], 'EX', ttl)
  end
end
call('INCR', KEYS[5])
call('EXPIRE', KEYS[5], ttl)
return 1
"""
)

BLOCK = r"""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
