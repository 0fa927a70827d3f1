"""Key layout v8 of the cap store, its pure part: a household's impressions as one event log,
and every answer a read needs computed from it in the client.

Layout v3 kept a counter per (family, scope id, target id): one hash field each, so a household
that saw 200 ads paid Redis' per-field cost for each of them in every family, and each write
rewrote whole counters. Layouts v4 to v8 keep, per hash tag (a household, or a user without one):

* the **log**: every impression of its span (``keep.log_span_s``, and a day or two), appended as one
  12-byte record (``EVENT``: its time, its ad tuple's and its context tuple's codes) (v5 and
  later ones append to a short tail that joins the log every 64 impressions; they read as one);
* the **dictionary**: the fingerprints (``keys.fingerprint``, ``FP_BYTES`` each) of the ids
  the log and the summaries use, appended; an id's *code* is its position (1-based; 0 is
  null);
* the **tuples**: the ids of one ad as codes (``TUPLE``: ad, creative, campaign, advertiser,
  category, competition label), and the *context* of an impression (its user, device,
  touchpoint and slot), appended; an event names its ad and its context by the tuple's
  position;
* the **day counts** of the impressions folded out of the log (:func:`fold`), for the readers
  that look further back: per day and in all (the lifetime) for the families
  with long windows, the campaigns' own caps and the features' 7-day windows. Every latest
  time a read asks (a minimum gap's, the campaign recency's) lies within the log's span.

Every family (scope x target, filtered or not) is computed from the log, so what a household
takes grows with its impressions of the last days, not with the number of families, rules or
targets. Whatever a read asks (``plan.Lookup``) is answered here, the same way as the
in-memory reference answers it from its lists of times. An impression counts in exactly one
place: in the log, or (after a fold) in the summaries, by its UTC day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.caps import kernel
from engine.caps.keep import Summary
from engine.caps.keys import FP_BYTES, family_code, fingerprint
from engine.caps.plan import ANY, DAY_US, US, Plan, micros
from engine.caps.rules import COMPETITOR, TARGET_COLUMN, Family, competitor_ids
from engine.caps.shape import Shape
from engine.caps.store import Answers, Impression

EVENT = np.dtype([("t", "<i8"), ("ad", "<u2"), ("ctx", "<u2")])
TUPLE_WIDTH = 6
TUPLE = np.dtype(("<u2", (TUPLE_WIDTH,)))
AD_COLUMNS = ("ad_id", "creative_id", "campaign_id", "advertiser_id", "category", COMPETITOR)
GROUP = np.dtype([("fam", "<u2"), ("scope", "<u2"), ("start", "<u4"), ("n", "<u4")])
MAX_CODES = 65_535  # codes are 16-bit: ids (and tuples) of one household's log and summaries
LIFETIME = 0  # the day of a lifetime count among a fold's records (``_Records``)
_DAYS_HEAD = 8  # a day-count string starts with its number of groups and its base day (u4, i4)
_COLUMN = {"ad": 0, "creative": 1, "campaign": 2, "advertiser": 3, "category": 4}
_COLUMN[COMPETITOR] = 5
_CONTEXT = {"user": 0, "device": 1, "touchpoint": 2, "slot": 3}  # a context tuple's columns
_FP_CACHE_SIZE = 1 << 17
_NO_TUPLE = np.zeros((1, TUPLE_WIDTH), dtype="<u2")


def fp_array(ids: bytes) -> np.ndarray:
    """A dictionary's fingerprints (``FP_BYTES`` each, little-endian) as unsigned integers."""
    n, rest = divmod(len(ids), FP_BYTES)
    if rest:
        raise ValueError(f"dictionary: {len(ids)} bytes, not whole fingerprints")
    wide = np.zeros((n, 8), dtype=np.uint8)
    wide[:, :FP_BYTES] = np.frombuffer(ids, dtype=np.uint8).reshape(n, FP_BYTES)
    return wide.view("<u8").reshape(n)


def fp_bytes(values: np.ndarray) -> bytes:
    """Fingerprints as unsigned integers back to their bytes (``FP_BYTES`` each)."""
    wide = np.ascontiguousarray(values, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return wide[:, :FP_BYTES].tobytes()


class _Fingerprints(dict[str | None, int]):
    """Ids' fingerprints as integers (little-endian, as the dictionary's bytes read), cached:
    a read looks up every id of its candidates; ``None`` is 0 (null)."""

    def __missing__(self, value: str | None) -> int:
        if value is None:
            return 0
        if len(self) >= _FP_CACHE_SIZE:
            self.clear()
            self[None] = 0
        found = self[value] = int.from_bytes(fingerprint(value), "little")
        return found


_FPS = _Fingerprints({None: 0})


def fp_value(value: str | None) -> int:
    """An id's fingerprint as an integer (0 for null)."""
    return _FPS[value]


@dataclass(frozen=True)
class Parts:
    """The stored strings of one hash tag, as they are in Redis."""

    ids: bytes = b""
    tuples: bytes = b""
    events: bytes = b""
    days: bytes = b""


def _day_parts(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """A day-count string: its groups (``GROUP``: family and scope codes, first byte and
    length of the group's runs in the body), the body and the base day.

    The string is the number of groups (``<u4``), the base day (``<i4``, days since the
    epoch: the newest day of any run), the groups, then the body: per group, per target
    (ascending) a *run* of unsigned LEB128 numbers: how far the target's code rises over the
    group's previous run's (over 0 for its first) times 2, plus 1 when a lifetime count
    follows; that lifetime count; the number of days ``k`` with a count; then per day, newest
    first, how many days before the previous one it is (the first: before the base day) times
    8 plus its count less one, 7 meaning a count of 8 or more given by one more number (the
    count less 8). A day of a count under 8 up to 15 days after the one before is one byte.
    Groups with the same runs share them (layout 6 wrote every code and day gap whole, a
    zero lifetime for families without one, and two numbers a day)."""
    if not data:
        return np.zeros(0, dtype=GROUP), np.zeros(0, dtype=np.uint8), 0
    if len(data) < _DAYS_HEAD:
        raise ValueError(f"day counts: {len(data)} bytes, shorter than their header")
    n = int.from_bytes(data[:4], "little")
    base = int.from_bytes(data[4:_DAYS_HEAD], "little", signed=True)
    head = np.frombuffer(data, dtype=GROUP, count=n, offset=_DAYS_HEAD)
    body = np.frombuffer(data, dtype=np.uint8, offset=_DAYS_HEAD + GROUP.itemsize * n)
    return head, body, base


def _varints(values: np.ndarray) -> bytes:
    """Non-negative integers as unsigned LEB128 (7 bits a byte, low first; the high bit says
    another byte follows)."""
    v = values.astype(np.uint64)
    size = np.ones(len(v), dtype=np.int64)
    shift = 7
    while shift < 64 and (v >> np.uint64(shift)).any():
        size += v >= np.uint64(1 << shift)
        shift += 7
    ends = np.cumsum(size)
    starts = ends - size
    out = np.zeros(int(ends[-1]) if len(v) else 0, dtype=np.uint8)
    for j in range(int(size.max()) if len(v) else 0):
        m = size > j
        byte = (v[m] >> np.uint64(7 * j)) & np.uint64(0x7F)
        byte |= np.where(size[m] - 1 > j, 0x80, 0).astype(np.uint64)
        out[starts[m] + j] = byte
    return out.tobytes()


class Log:
    """One hash tag's parts, decoded (zero-copy views) for reading."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.fps = fp_array(parts.ids)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # order, sorted (codes())
        # row 0 is the null tuple: an event's ad or context code indexes it directly
        self.tuples = np.concatenate([_NO_TUPLE, np.frombuffer(parts.tuples, dtype=TUPLE)])
        self.events = np.frombuffer(parts.events, dtype=EVENT)
        ev = self.events
        self.t, self.ad, self.ctx = ev["t"], ev["ad"], ev["ctx"]
        self.day_head, self.day_body, self.day_base = _day_parts(parts.days)

    @property
    def day_groups(self) -> dict[tuple[int, int], slice]:
        """The day counts' groups: (family, scope) codes -> their runs' bytes in the body."""
        return {
            (fam, scope): slice(first, first + size)
            for fam, scope, first, size in self.day_head.tolist()
        }

    def day_records(self, where: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The records of a group's runs (``day_groups``): target codes, days (``LIFETIME``
        for a lifetime count) and counts."""
        return kernel.day_records(self.day_body, where.start, where.stop, self.day_base)

    def codes(self, values: Iterable[str | None]) -> np.ndarray:
        """The codes of ids (0: null, or not in the dictionary)."""
        fps = np.fromiter(map(_FPS.__getitem__, values), dtype=np.uint64)
        if not len(self.fps) or not len(fps):
            return np.zeros(len(fps), dtype=np.int64)
        if self._sorted is None:
            order = np.argsort(self.fps, kind="stable")
            self._sorted = order, self.fps[order]
        order, ordered = self._sorted
        pos = np.searchsorted(ordered, fps)
        pos[pos >= len(ordered)] = 0
        found = ordered[pos] == fps
        return np.where(found, order[pos] + 1, 0).astype(np.int64)

    def code(self, value: str | None) -> int:
        """The code of one id (0: null, or unknown)."""
        return int(self.codes([value])[0]) if value is not None else 0


@dataclass(frozen=True)
class _Columns:
    """A shape's answers as a read computes them (built once per shape).

    Every answer is a cell of one flat array holding the groups' rows one after the other.
    A *count* column (a window, a day window, a bucket) counts the events of its lookup's
    *selection* (scope id and filter: ``selections``) within its bounds: a window ``w`` after
    ``t - w`` and before ``t``; a bucket from the start of the one ``back - 1`` before ``t``'s,
    before ``t``; days from the start of the day ``d - 1`` before ``t``'s, also after ``t`` (0
    days: the lifetime). Columns with the same lower bound share it. A *latest* column takes
    the latest time before ``t`` of its selection's events. ``program`` is all of it as the
    compiled loop (``kernel.count``) reads it. Lookups that read past the log also read their
    family's day counts."""

    selections: tuple[tuple[str, str | None, str | None], ...]  # (scope, touchpoint, slot)
    families: tuple[tuple[str, str], ...]  # code and scope of the lookups reading summaries
    program: np.ndarray


_COLUMNS: dict[int, tuple[Shape, _Columns]] = {}
_SCOPE_KIND = {"household": 0, "user": 1, "device": 2}


def _columns(shape: Shape) -> _Columns:
    cached = _COLUMNS.get(id(shape))
    if cached is not None and cached[0] is shape:
        return cached[1]
    selections: list[tuple[str, str | None, str | None]] = []
    counts: list[tuple[int, int, int]] = []
    entries: list[tuple[int, Any]] = []
    lasts: list[tuple[int, int, int]] = []
    families: list[tuple[str, str]] = []
    day_reads: list[tuple[int, int, int, int]] = []
    for lk in shape.lookups:
        fam = lk.family
        key = (fam.scope, fam.touchpoint, fam.slot)
        if key not in selections:
            selections.append(key)
        sel = selections.index(key)
        mine: list[tuple[int, Any]] = [(0, w * US) for w in lk.windows]
        mine += [(2, d) for d in lk.day_windows]
        mine += [(1, (hours * 3_600 * US, n)) for hours, n in lk.buckets]
        for j, entry in enumerate(mine):
            counts.append((lk.group, lk.offset + j, sel))
            entries.append(entry)
        if lk.last:
            lasts.append((lk.group, lk.offset + lk.width - 1, sel))
        # a day window's days, and a day bucket's before the log: from the day counts too
        first = lk.offset + len(lk.windows)
        days = [(first + j, d) for j, d in enumerate(lk.day_windows)]
        first += len(lk.day_windows)
        days += [(first + j, n) for j, (hours, n) in enumerate(lk.buckets) if hours == 24]
        if days:
            f = len(families)
            families.append((family_code(fam), fam.scope))
            day_reads += [(f, lk.group, column, d) for column, d in days]
    if len(_COLUMNS) >= 4_096:
        _COLUMNS.clear()
    lower, (lower_of, upper_of) = _bounds(entries)
    program = [len(shape.columns), len(selections), len(families), len(counts), len(lower)]
    program += [len(lasts), len(day_reads)]
    program += [0 if col is None else _COLUMN[_TARGET_OF[col]] for col in shape.columns]
    program += [int(col is None) for col in shape.columns]
    program += shape.widths
    program += [_SCOPE_KIND[scope] for scope, _, _ in selections]
    program += [int(touchpoint is not None) for _, touchpoint, _ in selections]
    program += [int(slot is not None) for _, _, slot in selections]
    for i in range(3):
        program += [row[i] for row in counts]
    program += lower_of + upper_of  # per count column
    for i in range(3):
        program += [spec[i] for spec in lower]
    for i in range(3):
        program += [row[i] for row in lasts]
    program += [_SCOPE_KIND[scope] for _, scope in families]
    for i in range(4):
        program += [row[i] for row in day_reads]
    out = _Columns(
        tuple(selections),
        tuple(families),
        np.asarray(program, dtype=np.int64),
    )
    _COLUMNS[id(shape)] = (shape, out)
    return out


_MAX = np.iinfo(np.int64).max
_TARGET_OF = {column: target for target, column in TARGET_COLUMN.items() if column}


def _bounds(
    entries: Sequence[tuple[int, Any]],
) -> tuple[list[tuple[int, int, int]], tuple[list[int], list[int]]]:
    """The distinct lower bounds of the count columns (floor, back, lifetime: see
    :class:`_Columns`) and, per column, its lower bound's index and its upper bound (0:
    before ``t``, 1: none)."""
    lower: dict[tuple[int, int, int], int] = {}
    which, upper = [], []
    for kind, value in entries:
        if kind == 0:
            spec = (1, value, 0)
        elif kind == 1:
            size, n = value
            spec = (size, (n - 1) * size + 1, 0)
        else:
            spec = (DAY_US, (value - 1) * DAY_US + 1, int(value == 0))
        which.append(lower.setdefault(spec, len(lower)))
        upper.append(0 if kind != 2 else 1)
    return list(lower), (which, upper)


def _names(plan: Plan, c: _Columns) -> list[str | None]:
    """Every id a read codes, in the order the compiled loop takes them: the user, the device,
    each selection's touchpoint and slot, each family read from the day counts, the fields."""
    names: list[str | None] = [plan.user_id, plan.device_id]
    for _, touchpoint, slot in c.selections:
        names += [touchpoint, slot]
    names += [name for name, _ in c.families]
    for fields in plan.fields:
        names += fields
    return names


def answers(plan: Plan, log: Log, inclusive: bool = False) -> Answers:
    """Every lookup of ``plan`` answered from ``log`` (see :class:`engine.caps.store.Answers`).
    ``inclusive`` also counts the impressions at or after ``t`` (an atomic check's reading).

    One compiled pass (``kernel.count``) codes the plan's ids in the log's dictionary, adds
    each event into the count columns it falls in and raises the latest times; the summaries'
    records are added in one batched step after."""
    out = Answers(plan)
    if not len(log.t) and not len(log.day_head):
        return out
    c = _columns(plan.shape)
    names = _names(plan, c)
    fps = np.fromiter(map(_FPS.__getitem__, names), dtype=np.uint64, count=len(names))
    sizes = np.fromiter(map(len, plan.fields), dtype=np.int64, count=len(plan.fields))
    kernel.count(
        out.flat,
        out.offsets,
        c.program,
        sizes,
        fps,
        plan.t_us,
        inclusive,
        plan.t_us - plan.shape.latest_lookback_s * US,
        log.events,
        log.tuples,
        log.fps,
        log.day_head,
        log.day_body,
        log.day_base,
    )
    return out


class Writer:
    """Builds a tag's parts the way the RECORD script appends to them (tests pin that the two
    agree byte for byte); a reservation appends the ads it admits to a copy of its snapshot
    with it."""

    def __init__(self, parts: Parts | None = None) -> None:
        """``parts``: go on from these (a reservation's earlier admitted ads)."""
        parts = parts or Parts()
        fps = fp_array(parts.ids).tolist()
        self._ids: dict[int, int] = {fp: i + 1 for i, fp in enumerate(fps)}
        rows = np.frombuffer(parts.tuples, dtype=TUPLE).tolist()
        self._tuples: dict[tuple[int, ...], int] = {tuple(r): i + 1 for i, r in enumerate(rows)}
        self.ids = bytearray(parts.ids)
        self.tuples = bytearray(parts.tuples)
        self.events = bytearray(parts.events)
        self.days = bytearray(parts.days)

    def intern(self, fp: int) -> int:
        """The code of a fingerprint (0 stays null), added to the dictionary if new."""
        if fp == 0:
            return 0
        code = self._ids.get(fp)
        if code is None:
            code = self._ids[fp] = len(self._ids) + 1
            self.ids += fp.to_bytes(FP_BYTES, "little")
        return code

    def tuple_code(self, fps: Sequence[int]) -> int:
        """The code of a tuple of fingerprints (padded with nulls), added if new."""
        codes = tuple(self.intern(f) for f in fps) + (0,) * (TUPLE_WIDTH - len(fps))
        code = self._tuples.get(codes)
        if code is None:
            code = self._tuples[codes] = len(self._tuples) + 1
            self.tuples += np.asarray(codes, dtype="<u2").tobytes()
        return code

    def add(
        self, t_us: int, user: int, device: int, ad: Sequence[int], place: Sequence[int]
    ) -> None:
        """Append one impression (ids as fingerprints, 0 for null)."""
        # the order of interning is the RECORD script's: user, device, the ad's ids, the
        # place's, then the ad tuple and the context tuple
        self.intern(user), self.intern(device)
        a, c = self.tuple_code(ad), self.tuple_code([user, device, *place])
        record = np.zeros(1, dtype=EVENT)
        record[0] = (t_us, a, c)
        self.events += record.tobytes()

    def parts(self) -> Parts:
        """What was written, as the stored strings."""
        if len(self._ids) > MAX_CODES or len(self._tuples) > MAX_CODES:
            raise OverflowError("more than 65,535 ids or tuples in one household's log")
        return Parts(
            bytes(self.ids),
            bytes(self.tuples),
            bytes(self.events),
            bytes(self.days),
        )


ALL_COLUMNS = (True,) * TUPLE_WIDTH


def recorded_columns(targets: Iterable[str]) -> tuple[bool, ...]:
    """Which of an ad's ids (``AD_COLUMNS``) the log records: those of ``targets``
    (``keep.read_targets``). An id no reader counts by would take a dictionary entry (and
    split tuples) for nothing: an ad id, say, where every rule counts creatives."""
    wanted = {TARGET_COLUMN[t] for t in targets if TARGET_COLUMN.get(t)}
    return tuple(c in wanted for c in AD_COLUMNS)


def impression_fps(
    imp: Impression, competing: Mapping[str, str], recorded: Sequence[bool] = ALL_COLUMNS
) -> tuple[int, int, list[int], list[int]]:
    """An impression's user, device, ad tuple (of its ``recorded`` columns; the others null)
    and place (touchpoint, slot) as fingerprints (0: null)."""
    ids = competitor_ids(imp.ids(), competing)
    ad = [_FPS[ids[c]] if keep else 0 for c, keep in zip(AD_COLUMNS, recorded, strict=True)]
    return _FPS[imp.user_id], _FPS[imp.device_id], ad, [_FPS[imp.touchpoint], _FPS[imp.slot]]


def impression_bytes(
    imp: Impression, competing: Mapping[str, str], recorded: Sequence[bool] = ALL_COLUMNS
) -> tuple[bytes, bytes]:
    """An impression's time (8 bytes) and ids (10 fingerprints, zero bytes for null), as the
    RECORD script takes them."""
    user, device, ad, place = impression_fps(imp, competing, recorded)
    ids = fp_bytes(np.asarray([user, device, *ad, *place], dtype="<u8"))
    return micros(imp.ts).to_bytes(8, "little", signed=True), ids


def add(
    writer: Writer,
    imp: Impression,
    competing: Mapping[str, str],
    recorded: Sequence[bool] = ALL_COLUMNS,
) -> None:
    """Append an impression to ``writer`` as the RECORD script appends it."""
    user, device, ad, place = impression_fps(imp, competing, recorded)
    writer.add(micros(imp.ts), user, device, ad, place)


Blocks = Mapping[tuple[str, str], Mapping[str, int]]  # (scope, target) -> id -> end (us)


@dataclass(frozen=True)
class Snapshot:
    """What one read returned for a tag: its parts, the blocks of the user (and household)
    that read, and its version (the log's length and the generation): a reservation checked
    on it holds only if the version has not moved."""

    log: Log
    blocks: Blocks
    version: tuple[int, bytes]


def blocked(plan: Plan, blocks: Blocks) -> np.ndarray:
    """Per candidate, whether a block covering ``plan``'s time covers it."""
    flags = []
    for spec in plan.shape.blocks:
        ends = [e for s in spec.scopes if (e := blocks.get((s, spec.target)))]
        fields = plan.block_fields(spec)
        if not ends:
            flags.append(np.zeros(len(fields), dtype=bool))
            continue
        flags.append(
            np.fromiter(
                (any(e.get(f, -1) > plan.t_us for e in ends) for f in fields),
                dtype=bool,
                count=len(fields),
            )
        )
    return plan.blocked(flags)


def fold_cut(newest_us: int, span_s: int, ahead_s: int) -> int:
    """The day (since the epoch) from which the log keeps every impression: what reads count
    from the log (``keep.log_span_s``: ``span_s``) is no older, for reads no earlier than
    ``ahead_s`` before the newest impression."""
    oldest_read = newest_us - ahead_s * US
    return (oldest_read - span_s * US) // DAY_US - 1


def _family_keys(
    fam: Family, ads: np.ndarray, ctx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per event (its ad and context tuples as fingerprints), its scope id and target id in
    ``fam`` (fingerprints; the household's scope id is 0) and whether it belongs to the
    family."""
    sel = np.ones(len(ads), dtype=bool)
    if fam.scope == "household":
        scopes = np.zeros(len(ads), dtype=np.uint64)
    else:
        scopes = ctx[:, _CONTEXT[fam.scope]]
        sel &= scopes > 0
    if fam.touchpoint is not None:
        sel &= ctx[:, _CONTEXT["touchpoint"]] == fp_value(fam.touchpoint)
    if fam.slot is not None:
        sel &= ctx[:, _CONTEXT["slot"]] == fp_value(fam.slot)
    if fam.target == "any":
        targets = np.full(len(ads), fp_value(ANY), dtype=np.uint64)
    else:
        targets = ads[:, _COLUMN[fam.target]]
        sel &= targets > 0
    return scopes, targets, sel


def fold(log: Log, cut_day: int, kept: Sequence[Summary], household: bool) -> Parts:
    """The tag's parts with the impressions before ``cut_day`` moved into the day counts of
    the families in ``kept`` (the day counts of other families are dropped, and day counts
    older than each family's days). The dictionary and tuples are rebuilt from what remains
    (codes change: a fold is a new version of the tag). ``household``: the tag is a
    household's (its household families hold every impression). Vectorised per family: every
    household folds about once a day."""
    ev = log.events
    t = ev["t"]
    fps = np.concatenate([np.zeros(1, dtype=np.uint64), log.fps])  # code -> fingerprint
    tuples = fps[log.tuples]  # tuple code -> its fingerprints
    ads, ctx = tuples[ev["ad"]], tuples[ev["ctx"]]
    families = [k for k in kept if household or k.family.scope != "household"]
    folding = t < cut_day * DAY_US
    newest_day = int(t.max() // DAY_US) if len(ev) else cut_day
    records = _Records()
    for summary in families:
        if not (summary.days or summary.life):
            continue
        name = fp_value(family_code(summary.family))
        oldest = newest_day - summary.days if summary.days else _MAX  # days up to it go
        prior = log.code(family_code(summary.family))
        for (f, group_scope), where in log.day_groups.items():  # what earlier folds kept
            if prior and f == prior:
                target, day, count = log.day_records(where)
                scopes = fps[np.full(len(day), group_scope)]
                records.add(name, scopes, fps[target], day, count)
        scopes, targets, sel = _family_keys(summary.family, ads, ctx)
        sel &= folding
        ones = np.ones(int(sel.sum()), dtype=np.int64)
        records.add(name, scopes[sel], targets[sel], t[sel] // DAY_US, ones)
        records.add(name, scopes[sel], targets[sel], np.full(len(ones), LIFETIME), ones)
        records.keep(name, oldest, summary.life)
    # the parts again: a dictionary of the ids still used (sorted), the tuples still used
    keep = np.flatnonzero(~folding)
    ad, context = ads[keep], ctx[keep][:, : len(_CONTEXT)]
    family, scope, target, day, count = records.summed()
    ids = np.unique(np.concatenate([ad.ravel(), context.ravel(), family, scope, target]))
    ids = ids[ids != 0]

    def code(values: np.ndarray) -> np.ndarray:
        return np.where(values == 0, 0, np.searchsorted(ids, values) + 1)

    both = np.zeros((2 * len(ad), TUPLE_WIDTH), dtype=np.int64)
    both[: len(ad)] = code(ad)
    both[len(ad) :, : len(_CONTEXT)] = code(context)
    rows, which = np.unique(both, axis=0, return_inverse=True)
    which = which.reshape(-1)
    if len(ids) > MAX_CODES or len(rows) > MAX_CODES:
        raise OverflowError("more than 65,535 ids or tuples in one household's log")
    events = np.empty(len(ad), dtype=EVENT)
    events["t"] = t[keep]
    events["ad"], events["ctx"] = which[: len(ad)] + 1, which[len(ad) :] + 1
    days = _day_bytes(code(family), code(scope), code(target), day, count)
    return Parts(fp_bytes(ids), rows.astype("<u2").tobytes(), events.tobytes(), days)


class _Records:
    """A fold's day records as columns of fingerprints (family, scope, target), the day
    (``LIFETIME`` for the lifetime count) and the count, summed by key when encoded."""

    def __init__(self) -> None:
        self.columns: list[list[np.ndarray]] = [[], [], [], [], []]
        self.start = 0  # the first record of the family being added

    def add(
        self, name: int, scope: np.ndarray, target: np.ndarray, day: np.ndarray, count: np.ndarray
    ) -> None:
        family = np.full(len(day), name, dtype=np.uint64)
        values = (family, scope.astype(np.uint64), target.astype(np.uint64), day, count)
        for column, value in zip(self.columns, values, strict=True):
            column.append(np.asarray(value, dtype=column[0].dtype if column else value.dtype))

    def keep(self, name: int, oldest: int, life: bool) -> None:
        """Drop the family's day counts up to ``oldest`` (and its lifetime unless ``life``)."""
        n = sum(len(c) for c in self.columns[3]) - self.start
        if n:
            day = np.concatenate(self.columns[3])[self.start :]
            drop = (day == LIFETIME) if not life else np.zeros(n, dtype=bool)
            drop |= (day != LIFETIME) & (day <= oldest)
            if drop.any():
                for column in self.columns:
                    whole = np.concatenate(column)
                    column[:] = [whole[: self.start], whole[self.start :][~drop]]
        self.start = sum(len(c) for c in self.columns[3])

    def summed(self) -> tuple[np.ndarray, ...]:
        """The records summed by key (family, scope, target, day), sorted by it."""
        if not self.start:
            empty = np.zeros(0, dtype=np.uint64)
            return empty, empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        family, scope, target, day, count = (np.concatenate(c) for c in self.columns)
        order = np.lexsort((day, target, scope, family))
        family, scope, target, day, count = (c[order] for c in (family, scope, target, day, count))
        first = np.ones(len(day), dtype=bool)  # the first record of each key
        first[1:] = (
            (family[1:] != family[:-1])
            | (scope[1:] != scope[:-1])
            | (target[1:] != target[:-1])
            | (day[1:] != day[:-1])
        )
        starts = np.flatnonzero(first)
        count = np.add.reduceat(count, starts)
        return family[starts], scope[starts], target[starts], day[starts], count


def _day_bytes(
    family: np.ndarray, scope: np.ndarray, target: np.ndarray, day: np.ndarray, count: np.ndarray
) -> bytes:
    """The day-count string (``_day_parts``) of summed records, ids as codes (a target's
    lifetime count is its record of day ``LIFETIME``)."""
    if not len(day):
        return b""
    order = np.lexsort((-day, target, scope, family))  # a run's days newest first
    family, scope, target, day, count = (c[order] for c in (family, scope, target, day, count))
    first = np.ones(len(day), dtype=bool)  # the first record of each run (family, scope, target)
    first[1:] = (family[1:] != family[:-1]) | (scope[1:] != scope[:-1])
    first[1:] |= target[1:] != target[:-1]
    run = np.cumsum(first) - 1
    n_runs = int(run[-1]) + 1
    life = day == LIFETIME
    has_life = np.zeros(n_runs, dtype=bool)
    has_life[run[life]] = True
    lifetime = np.zeros(n_runs, dtype=np.int64)
    lifetime[run[life]] = count[life]
    dated = ~life
    days, counts = day[dated].astype(np.int64), count[dated].astype(np.int64)
    runs = run[dated]
    base = int(days.max()) if len(days) else 0
    k = np.bincount(runs, minlength=n_runs)
    previous = np.empty(len(days), dtype=np.int64)  # the day before each in its run's order
    previous[1:] = days[:-1]
    previous[np.flatnonzero(np.diff(runs, prepend=-1))] = base  # a run's newest: from the base
    entry = (previous - days) * 8 + np.minimum(counts, 8) - 1
    big = counts >= 8
    code = target[first].astype(np.int64)
    group = (family[first].astype(np.int64) << 16) | scope[first].astype(np.int64)
    group_first = np.ones(n_runs, dtype=bool)  # a group's first run
    group_first[1:] = group[1:] != group[:-1]
    rise = np.diff(code, prepend=0)
    rise[group_first] = code[group_first]
    # every number with its place: (run, slot): the head 0, the lifetime 1, k 2, then per
    # day its entry 3 + 2i and its count past 8, 4 + 2i
    slot = 3 + 2 * (np.arange(len(days)) - (np.cumsum(k) - k)[runs])
    whole = np.arange(n_runs) << 32
    at = np.concatenate(
        [whole, whole[has_life] + 1, whole + 2, (runs << 32) + slot, ((runs << 32) + slot + 1)[big]]
    )
    values = np.concatenate([rise * 2 + has_life, lifetime[has_life], k, entry, counts[big] - 8])
    placed = np.argsort(at, kind="stable")
    values, owner = values[placed], at[placed] >> 32
    bounds = np.flatnonzero(group_first)
    starts = np.searchsorted(owner, bounds)
    ends = np.append(starts[1:], len(values))
    groups: dict[tuple[int, int], bytes] = {}
    for g, a, b in zip(bounds.tolist(), starts.tolist(), ends.tolist(), strict=True):
        groups[(int(group[g]) >> 16, int(group[g]) & 0xFFFF)] = _varints(values[a:b])
    head_rows, body, where = [], bytearray(), {}
    for (fam, sc), runs_bytes in sorted(groups.items()):
        if runs_bytes not in where:
            where[runs_bytes] = len(body)
            body += runs_bytes
        head_rows.append((fam, sc, where[runs_bytes], len(runs_bytes)))
    return (
        len(head_rows).to_bytes(4, "little")
        + base.to_bytes(4, "little", signed=True)
        + np.asarray(head_rows, dtype=GROUP).tobytes()
        + bytes(body)
    )
