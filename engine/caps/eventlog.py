"""Key layout v4 of the cap store, its pure part: a household's impressions as one event log,
and every answer a read needs computed from it in the client.

Layout v3 kept a counter per (family, scope id, target id): one hash field each, so a household
that saw 200 ads paid Redis' per-field cost for each of them in every family, and each write
rewrote whole counters. Layout v4 keeps, per hash tag (a household, or a user without one):

* the **log**: every impression of the last retention (and a day or two), appended as one
  16-byte record (``EVENT``: its time, user, device, ad and place codes);
* the **dictionary**: the 8-byte fingerprints (``keys.fingerprint``) of the ids the log and
  the summaries use, appended; an id's *code* is its position (1-based; 0 is null);
* the **tuples**: the ids of one ad as codes (``TUPLE``: ad, creative, campaign, advertiser,
  category, competition label), and the touchpoint and slot of a place, appended; an event
  names its ad and its place by the tuple's position;
* the **summaries** of the impressions folded out of the log (:func:`fold`), for the readers
  that look further back: per day and in all (``DAYS``: day 0 is the lifetime) for the families
  with long windows and the campaigns' own caps, and the latest time (``LAST``) for the
  families whose recency or gap is read.

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

from engine.caps.keep import Summary
from engine.caps.keys import family_code, fingerprint
from engine.caps.plan import ANY, DAY_US, US, Plan, micros
from engine.caps.rules import (
    COMPETITOR,
    TARGET_COLUMN,
    competitor_ids,
)
from engine.caps.shape import Shape
from engine.caps.store import Impression, Matrices

EVENT = np.dtype(
    [("t", "<i8"), ("user", "<u2"), ("device", "<u2"), ("ad", "<u2"), ("place", "<u2")]
)
TUPLE_WIDTH = 6
TUPLE = np.dtype(("<u2", (TUPLE_WIDTH,)))
AD_COLUMNS = ("ad_id", "creative_id", "campaign_id", "advertiser_id", "category", COMPETITOR)
GROUP = np.dtype([("fam", "<u2"), ("scope", "<u2"), ("start", "<u4"), ("n", "<u4")])
DAYS = np.dtype([("target", "<u2"), ("day", "<u2"), ("count", "<u2")])
LAST = np.dtype([("t", "<i8"), ("target", "<u2"), ("pad", "<u2", (3,))])
MAX_CODES = 65_535  # codes are 16-bit: ids (and tuples) of one household's log and summaries
LIFETIME = 0  # the day of a lifetime count's low 16 bits in DAYS (its high 16 bits: day 1)
_HIGH = 1
_MAX_DAY_COUNT = 65_535  # a day's count saturates
_COLUMN = {"ad": 0, "creative": 1, "campaign": 2, "advertiser": 3, "category": 4}
_COLUMN[COMPETITOR] = 5
_FP_CACHE_SIZE = 1 << 17
_NO_TUPLE = np.zeros((1, TUPLE_WIDTH), dtype="<u2")


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
    last: bytes = b""


def _grouped(data: bytes, dtype: np.dtype) -> tuple[dict[tuple[int, int], slice], np.ndarray]:
    """A summary string: its groups (family and scope codes -> their records) and records.

    The string is the number of groups (``<u4``), the groups (``GROUP``: family, scope, first
    record, number of records), then the records. Groups with the same records share them."""
    if not data:
        return {}, np.zeros(0, dtype=dtype)
    n = int.from_bytes(data[:4], "little")
    head = np.frombuffer(data, dtype=GROUP, count=n, offset=4)
    records = np.frombuffer(data, dtype=dtype, offset=4 + GROUP.itemsize * n)
    groups = {
        (int(g["fam"]), int(g["scope"])): slice(int(g["start"]), int(g["start"] + g["n"]))
        for g in head
    }
    return groups, records


def _group_bytes(groups: Mapping[tuple[int, int], bytes], dtype: np.dtype) -> bytes:
    """The summary string of groups given as their records' bytes (identical ones stored
    once)."""
    if not groups:
        return b""
    head, body, where = [], bytearray(), {}
    for (fam, scope), records in sorted(groups.items()):
        if records not in where:
            where[records] = len(body) // dtype.itemsize
            body += records
        head.append((fam, scope, where[records], len(records) // dtype.itemsize))
    return len(head).to_bytes(4, "little") + np.asarray(head, dtype=GROUP).tobytes() + bytes(body)


class Log:
    """One hash tag's parts, decoded (zero-copy views) for reading."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.fps = np.frombuffer(parts.ids, dtype="<u8")
        self._order = np.argsort(self.fps, kind="stable")
        self._sorted = self.fps[self._order]
        # row 0 is the null tuple: an event's ad or place code indexes it directly
        self.tuples = np.concatenate([_NO_TUPLE, np.frombuffer(parts.tuples, dtype=TUPLE)])
        self.events = np.frombuffer(parts.events, dtype=EVENT)
        ev = self.events
        self.t, self.user, self.device = ev["t"], ev["user"], ev["device"]
        self.ad, self.place = ev["ad"], ev["place"]
        self.day_groups, self.days = _grouped(parts.days, DAYS)
        self.last_groups, self.last = _grouped(parts.last, LAST)
        self.day_target, self.day_day = self.days["target"], self.days["day"]
        self.day_count = self.days["count"]
        self.last_t, self.last_target = self.last["t"], self.last["target"]

    def codes(self, values: Iterable[str | None]) -> np.ndarray:
        """The codes of ids (0: null, or not in the dictionary)."""
        fps = np.fromiter(map(_FPS.__getitem__, values), dtype=np.uint64)
        if not len(self.fps) or not len(fps):
            return np.zeros(len(fps), dtype=np.int64)
        pos = np.searchsorted(self._sorted, fps)
        pos[pos >= len(self._sorted)] = 0
        found = self._sorted[pos] == fps
        return np.where(found, self._order[pos] + 1, 0).astype(np.int64)

    def code(self, value: str | None) -> int:
        """The code of one id (0: null, or unknown)."""
        return int(self.codes([value])[0]) if value is not None else 0


@dataclass(frozen=True)
class _Columns:
    """A shape's answers as the batched read computes them (built once per shape).

    Every answer is a cell of one flat array holding the groups' rows one after the other.
    A *count* column (a window, a day window, a bucket) counts the events of its lookup's
    *selection* (scope id and filter: ``selections``) with a time in its bounds (``entries``:
    kind 0 a window, after ``t - value`` and before ``t``; 1 a bucket, from the start of the
    bucket ``value = (size, back)`` back, before ``t``; 2 days, from the start of the day
    ``value - 1`` before ``t``'s, also after ``t``; 0 days: the lifetime). A *latest* column
    takes the latest time before ``t`` of its selection's events. Lookups that read past the
    log also read the summaries of their family (``day_reads``, ``last_reads``)."""

    selections: tuple[tuple[str, str | None, str | None], ...]  # (scope, touchpoint, slot)
    count_group: np.ndarray
    count_column: np.ndarray  # the column in its group's rows
    count_selection: np.ndarray
    entries: tuple[tuple[int, Any], ...]
    last_group: np.ndarray
    last_column: np.ndarray
    last_selection: np.ndarray
    families: tuple[tuple[str, str], ...]  # code and scope of the lookups reading summaries
    day_reads: tuple[tuple[int, int, int, int], ...]  # family, group, column, days (0: life)
    last_reads: tuple[tuple[int, int, int], ...]  # family, group, column
    group_target: np.ndarray  # per group, its column in an ad tuple (the any group: 0)


_COLUMNS: dict[int, tuple[Shape, _Columns]] = {}


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
    last_reads: list[tuple[int, int, int]] = []
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
        last = lk.offset + lk.width - 1
        if lk.last:
            lasts.append((lk.group, last, sel))
        if lk.day_windows or lk.last:
            f = len(families)
            families.append((family_code(fam), fam.scope))
            first = lk.offset + len(lk.windows)
            day_reads += [(f, lk.group, first + j, d) for j, d in enumerate(lk.day_windows)]
            if lk.last:
                last_reads.append((f, lk.group, last))
    if len(_COLUMNS) >= 4_096:
        _COLUMNS.clear()

    def column(rows: list[tuple[int, int, int]], i: int) -> np.ndarray:
        return np.asarray([r[i] for r in rows], dtype=np.int64)

    out = _Columns(
        tuple(selections),
        column(counts, 0),
        column(counts, 1),
        column(counts, 2),
        tuple(entries),
        column(lasts, 0),
        column(lasts, 1),
        column(lasts, 2),
        tuple(families),
        tuple(day_reads),
        tuple(last_reads),
        np.asarray(
            [0 if col is None else _COLUMN[_TARGET_OF[col]] for col in shape.columns],
            dtype=np.int64,
        ),
    )
    _COLUMNS[id(shape)] = (shape, out)
    return out


_MIN, _MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
_TARGET_OF = {column: target for target, column in TARGET_COLUMN.items() if column}


def _bounds(c: _Columns, t0: int, inclusive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per count column, the bounds of the times it counts: ``lo < t < hi``."""
    before = _MAX if inclusive else t0
    lo, hi = [], []
    for kind, value in c.entries:
        if kind == 0:
            lo.append(t0 - value)
            hi.append(before)
        elif kind == 1:
            size, back = value
            lo.append((t0 // size - back + 1) * size - 1)
            hi.append(before)
        else:
            lo.append(_MIN if value == 0 else (t0 // DAY_US - value + 1) * DAY_US - 1)
            hi.append(_MAX)
    return np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)


def answers(plan: Plan, log: Log, inclusive: bool = False) -> Matrices:
    """Every lookup of ``plan`` answered from ``log``: per group one row per field, as
    :func:`engine.caps.store.group_matrices` lays them out. ``inclusive`` also counts the
    impressions at or after ``t`` (an atomic check's reading).

    Batched over every lookup at once: a table maps each id's code to its field's row in each
    group; one boolean matrix says which event counts in which count column (its selection and
    its time bounds); one ``bincount`` adds them up into the groups' rows, one maximum takes
    the latest times; the summaries' records are added the same way."""
    shape = plan.shape
    widths = shape.widths
    sizes = [(len(f) + 1) * w for f, w in zip(plan.fields, widths, strict=True)]
    base = np.cumsum([0, *sizes])
    flat = np.empty(int(base[-1]))
    matrices = []
    for g, defaults in enumerate(shape.row_defaults):
        view = flat[base[g] : base[g + 1]].reshape(len(plan.fields[g]) + 1, widths[g])
        view[:] = defaults
        matrices.append(view)
    t, t0 = log.t, plan.t_us
    if not len(t) and not log.day_groups and not log.last_groups:
        return matrices
    c = _columns(shape)
    # every id the read needs, coded at once: user, device, filters, family codes, fields
    names: list[str | None] = [plan.user_id, plan.device_id]
    for _, touchpoint, slot in c.selections:
        names += [touchpoint, slot]
    names += [name for name, _ in c.families]
    first_field = len(names)
    for fields in plan.fields:
        names += fields
    codes = log.codes(names)
    scope = {"user": int(codes[0]), "household": 0, "device": int(codes[1])}
    table = np.full((len(log.fps) + 1, len(widths)), -1, dtype=np.int64)
    pos = first_field
    for g, column in enumerate(shape.columns):
        k = len(plan.fields[g])
        if column is None:
            table[1:, g] = 0  # the any group: every ad is its one field
        else:
            mine = codes[pos : pos + k]
            known = mine > 0
            table[mine[known], g] = np.flatnonzero(known)
        pos += k
    n_groups = np.arange(len(widths))
    width = np.asarray(widths, dtype=np.int64)
    if len(t):
        places = log.tuples[log.place]
        select = np.ones((len(t), len(c.selections)), dtype=bool)
        for j, (scope_name, touchpoint, slot) in enumerate(c.selections):
            if scope_name != "household":
                code = scope[scope_name]
                ids = log.user if scope_name == "user" else log.device
                select[:, j] = (ids == code) if code else False
            if touchpoint is not None:
                select[:, j] &= places[:, 0] == codes[2 + 2 * j]
            if slot is not None:
                select[:, j] &= places[:, 1] == codes[3 + 2 * j]
        # per event and group, the row of its field (-1: not a field of the group)
        rows = table[log.tuples[log.ad][:, c.group_target], n_groups]
        if len(c.count_group):
            lo, hi = _bounds(c, t0, inclusive)
            tt = t[:, None]
            fr = rows[:, c.count_group]
            hits = select[:, c.count_selection] & (tt > lo) & (tt < hi) & (fr >= 0)
            cells = base[c.count_group] + fr * width[c.count_group] + c.count_column
            flat += np.bincount(cells[hits], minlength=len(flat))
        if len(c.last_group):
            fr = rows[:, c.last_group]
            hits = select[:, c.last_selection] & (fr >= 0)
            if not inclusive:
                hits &= (t < t0)[:, None]
            cells = base[c.last_group] + fr * width[c.last_group] + c.last_column
            times = np.broadcast_to(t[:, None], cells.shape)[hits].astype(float)
            np.maximum.at(flat, cells[hits], times)
    if log.day_groups or log.last_groups:
        _add_summaries(flat, base, width, c, log, codes, scope, table, t0, inclusive)
    return matrices


def _add_summaries(
    flat: np.ndarray,
    base: np.ndarray,
    width: np.ndarray,
    c: _Columns,
    log: Log,
    codes: np.ndarray,
    scope: Mapping[str, int],
    table: np.ndarray,
    t0: int,
    inclusive: bool,
) -> None:
    """Add the folded impressions: day counts to the day windows (and lifetime), latest
    times to the latest columns, every lookup's at once."""
    first = 2 + 2 * len(c.selections)
    family = [int(codes[first + f]) for f in range(len(c.families))]
    # a user or device the dictionary does not know has no summaries (0 is the household's)
    lookup_scope = [
        scope[name] if name == "household" or scope[name] else -1 for _, name in c.families
    ]
    day_t = t0 // DAY_US
    parts, groups, columns, windows = [], [], [], []
    for f, g, col, d in c.day_reads:
        found = log.day_groups.get((family[f], lookup_scope[f])) if family[f] else None
        if found is not None and found.stop > found.start:
            parts.append(np.arange(found.start, found.stop))
            groups.append(np.full(found.stop - found.start, g))
            columns.append(np.full(found.stop - found.start, col))
            windows.append(np.full(found.stop - found.start, d))
    if parts:
        idx, gs, cs, ds = (np.concatenate(x) for x in (parts, groups, columns, windows))
        day, count = log.day_day[idx].astype(np.int64), log.day_count[idx].astype(float)
        fr = table[log.day_target[idx], gs]
        life = ds == 0
        ok = (fr >= 0) & np.where(life, day <= _HIGH, (day > _HIGH) & (day >= day_t - ds + 1))
        weight = np.where(life & (day == _HIGH), count * 65_536, count)
        np.add.at(flat, (base[gs] + fr * width[gs] + cs)[ok], weight[ok])
    parts, groups, columns = [], [], []
    for f, g, col in c.last_reads:
        found = log.last_groups.get((family[f], lookup_scope[f])) if family[f] else None
        if found is not None and found.stop > found.start:
            parts.append(np.arange(found.start, found.stop))
            groups.append(np.full(found.stop - found.start, g))
            columns.append(np.full(found.stop - found.start, col))
    if parts:
        idx, gs, cs = (np.concatenate(x) for x in (parts, groups, columns))
        fr, times = table[log.last_target[idx], gs], log.last_t[idx]
        ok = fr >= 0
        if not inclusive:
            ok &= times < t0
        np.maximum.at(flat, (base[gs] + fr * width[gs] + cs)[ok], times[ok].astype(float))


class Writer:
    """Builds a tag's parts the way the RECORD script appends to them (tests pin that the two
    agree byte for byte), and re-encodes what :func:`fold` keeps."""

    def __init__(self, parts: Parts | None = None) -> None:
        """``parts``: go on from these (a reservation's earlier admitted ads)."""
        parts = parts or Parts()
        fps = np.frombuffer(parts.ids, dtype="<u8").tolist()
        self._ids: dict[int, int] = {fp: i + 1 for i, fp in enumerate(fps)}
        rows = np.frombuffer(parts.tuples, dtype=TUPLE).tolist()
        self._tuples: dict[tuple[int, ...], int] = {tuple(r): i + 1 for i, r in enumerate(rows)}
        self.ids = bytearray(parts.ids)
        self.tuples = bytearray(parts.tuples)
        self.events = bytearray(parts.events)
        self.days = bytearray(parts.days)
        self.last = bytearray(parts.last)

    def intern(self, fp: int) -> int:
        """The code of a fingerprint (0 stays null), added to the dictionary if new."""
        if fp == 0:
            return 0
        code = self._ids.get(fp)
        if code is None:
            code = self._ids[fp] = len(self._ids) + 1
            self.ids += fp.to_bytes(8, "little")
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
        # the order of interning is the RECORD script's: user, device, ad tuple, place tuple
        u, d = self.intern(user), self.intern(device)
        a, p = self.tuple_code(ad), self.tuple_code(place)
        record = np.zeros(1, dtype=EVENT)
        record[0] = (t_us, u, d, a, p)
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
            bytes(self.last),
        )


def impression_fps(
    imp: Impression, competing: Mapping[str, str]
) -> tuple[int, int, list[int], list[int]]:
    """An impression's user, device, ad tuple and place tuple as fingerprints (0: null)."""
    ids = competitor_ids(imp.ids(), competing)
    ad = [_FPS[ids[c]] for c in AD_COLUMNS]
    return _FPS[imp.user_id], _FPS[imp.device_id], ad, [_FPS[imp.touchpoint], _FPS[imp.slot]]


def impression_bytes(imp: Impression, competing: Mapping[str, str]) -> tuple[bytes, bytes]:
    """An impression's time (8 bytes) and ids (10 fingerprints, 8 zero bytes for null), as
    the RECORD script takes them."""
    user, device, ad, place = impression_fps(imp, competing)
    ids = np.asarray([user, device, *ad, *place], dtype="<u8").tobytes()
    return micros(imp.ts).to_bytes(8, "little", signed=True), ids


def add(writer: Writer, imp: Impression, competing: Mapping[str, str]) -> None:
    """Append an impression to ``writer`` as the RECORD script appends it."""
    user, device, ad, place = impression_fps(imp, competing)
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


def fold_cut(newest_us: int, retention_s: int, ahead_s: int) -> int:
    """The day (since the epoch) from which the log keeps every impression: exact windows up
    to the retention and the 7-day features read nothing older, for reads no earlier than
    ``ahead_s`` before the newest impression."""
    oldest_read = newest_us - ahead_s * US
    return min((oldest_read - retention_s * US) // DAY_US, oldest_read // DAY_US - 7) - 1


def fold(log: Log, cut_day: int, kept: Sequence[Summary], household: bool) -> Parts:
    """The tag's parts with the impressions before ``cut_day`` moved into the summaries of
    the families in ``kept`` (summaries of other families are dropped), day counts older than
    each family's days dropped, and the dictionary and tuples rebuilt from what remains
    (codes change: a fold is a new version of the tag). ``household``: the tag is a
    household's (its household families hold every impression)."""
    ev = log.events
    old = ev["t"] < cut_day * DAY_US
    fps = np.concatenate([np.zeros(1, dtype=np.uint64), log.fps])  # code -> fingerprint
    tuples = fps[log.tuples]  # tuple code -> its fingerprints
    out = Writer()
    days: dict[tuple[int, int, int, int], int] = {}
    last: dict[tuple[int, int, int], int] = {}
    newest_day = int(ev["t"].max() // DAY_US) if len(ev) else cut_day
    old_ev = ev[old]
    ads, places = tuples[old_ev["ad"]], tuples[old_ev["place"]]
    for summary in kept:
        fam = summary.family
        if fam.scope == "household" and not household:
            continue
        name = fp_value(family_code(fam))
        prior_code = log.code(family_code(fam))
        # what earlier folds kept, in fingerprints
        if prior_code:
            for (f, scope), where in log.day_groups.items():
                if f != prior_code:
                    continue
                for r in log.days[where]:
                    day, count = int(r["day"]), int(r["count"])
                    if day == _HIGH:
                        day, count = LIFETIME, count << 16
                    key = (name, int(fps[scope]), int(fps[r["target"]]), day)
                    days[key] = days.get(key, 0) + count
            for (f, scope), where in log.last_groups.items():
                if f != prior_code:
                    continue
                for r in log.last[where]:
                    key3 = (name, int(fps[scope]), int(fps[r["target"]]))
                    last[key3] = max(last.get(key3, -1), int(r["t"]))
        sel = np.ones(len(old_ev), dtype=bool)
        if fam.scope != "household":
            sel &= old_ev[fam.scope] > 0
        if fam.touchpoint is not None:
            sel &= places[:, 0] == fp_value(fam.touchpoint)
        if fam.slot is not None:
            sel &= places[:, 1] == fp_value(fam.slot)
        if fam.target == "any":
            targets = np.full(len(old_ev), fp_value(ANY), dtype=np.uint64)
        else:
            targets = ads[:, _COLUMN[fam.target]]
            sel &= targets > 0
        scopes = (
            np.zeros(len(old_ev), dtype=np.uint64)
            if fam.scope == "household"
            else fps[old_ev[fam.scope]]
        )
        for s, tg, ts in zip(scopes[sel], targets[sel], old_ev["t"][sel], strict=True):
            s, tg, ts = int(s), int(tg), int(ts)
            if summary.days:
                key = (name, s, tg, ts // DAY_US)
                days[key] = days.get(key, 0) + 1
            if summary.life:
                key = (name, s, tg, LIFETIME)
                days[key] = days.get(key, 0) + 1
            if summary.last:
                last[(name, s, tg)] = max(last.get((name, s, tg), -1), ts)
        for key in [k for k in days if k[0] == name]:
            day = key[3]
            if day == LIFETIME and not summary.life:
                del days[key]
            elif day != LIFETIME and (not summary.days or day <= newest_day - summary.days):
                del days[key]
        if not summary.last:
            for key3 in [k for k in last if k[0] == name]:
                del last[key3]
    keep_names = {fp_value(family_code(s.family)) for s in kept}
    for e in ev[~old]:
        out.add(
            int(e["t"]),
            int(fps[e["user"]]),
            int(fps[e["device"]]),
            [int(x) for x in tuples[e["ad"]]],
            [int(x) for x in tuples[e["place"]][:2]],
        )
    day_groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for (n, sc, tg, d), count in sorted(days.items()):
        if n not in keep_names:
            continue
        records = day_groups.setdefault((out.intern(n), out.intern(sc)), [])
        if d == LIFETIME:
            records.append((out.intern(tg), LIFETIME, count & 0xFFFF))
            if count >> 16:
                records.append((out.intern(tg), _HIGH, min(count >> 16, 0xFFFF)))
        else:
            records.append((out.intern(tg), d, min(count, _MAX_DAY_COUNT)))
    last_groups: dict[tuple[int, int], list[tuple[int, int, tuple[int, int, int]]]] = {}
    for (n, sc, tg), ts in sorted(last.items()):
        if n in keep_names:
            group = last_groups.setdefault((out.intern(n), out.intern(sc)), [])
            group.append((ts, out.intern(tg), (0, 0, 0)))
    out.days += _group_bytes(
        {k: np.asarray(v, dtype=DAYS).tobytes() for k, v in day_groups.items()}, DAYS
    )
    out.last += _group_bytes(
        {k: np.asarray(v, dtype=LAST).tobytes() for k, v in last_groups.items()}, LAST
    )
    return out.parts()
