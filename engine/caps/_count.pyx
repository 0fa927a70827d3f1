# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The inner loop of a cap read (``eventlog.answers``): one pass over a household's events.

It codes the read's ids in the household's dictionary (a hash of its fingerprints), builds
the table of each group's fields by code, then, per event: which of the read's selections (a
scope id, filtered by touchpoint or slot) it belongs to, the row of its ad's field in each
group, every count column it falls in and every latest time it raises. What a read computes
is what the numpy evaluator it replaces computed (the event-log reference tests pin it against
the in-memory store); numpy took some 60 array calls a read, each paying its fixed overhead,
and an events x columns temporary per step.

The shape's part of the work comes as one int64 array (``program``, built once per shape by
``eventlog._columns``), laid out as ``_program`` reads it.
"""

from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.math cimport NAN
from libc.stdlib cimport free, malloc

cdef enum:
    MAX_GROUPS = 64
    MAX_SELECTIONS = 64
    HEADER = 7  # groups, selections, families, counts, lower bounds, latest columns, day reads


cdef packed struct Event:  # eventlog.EVENT
    int64_t t
    uint16_t ad  # its ad tuple
    uint16_t ctx  # its context tuple: user, device, touchpoint, slot


cdef packed struct DayGroup:  # eventlog.GROUP
    uint16_t fam
    uint16_t scope
    uint32_t start
    uint32_t n


cdef struct Program:
    Py_ssize_t n_groups, n_sel, n_fam, n_counts, n_lower, n_lasts, n_days
    const int64_t *group_target  # per group: its column in an ad tuple
    const int64_t *group_any  # per group: 1 for the any group (every ad is its one field)
    const int64_t *width  # per group: answers per field
    const int64_t *sel_kind  # per selection: 0 the household's, 1 the user's, 2 the device's
    const int64_t *sel_touchpoint  # per selection: 1 if filtered by touchpoint
    const int64_t *sel_slot  # per selection: 1 if filtered by slot
    const int64_t *count_group
    const int64_t *count_column
    const int64_t *count_selection
    const int64_t *count_lower  # its lower bound: an index into the lower_* arrays
    const int64_t *count_upper  # 0: before t, 1: no upper bound
    const int64_t *lower_floor  # a lower bound is (t // floor) * floor - back
    const int64_t *lower_back
    const int64_t *lower_lifetime  # 1: none
    const int64_t *last_group
    const int64_t *last_column
    const int64_t *last_selection
    const int64_t *fam_scope  # per family read from the day counts: its scope's kind
    const int64_t *day_family  # per day window: its family, group, column, days (0: lifetime)
    const int64_t *day_group
    const int64_t *day_column
    const int64_t *day_days


cdef int _program(const int64_t[::1] p, Program *out) except -1:
    """Point ``out`` into ``p``: the header (``HEADER`` sizes), then per group target, any,
    width; per selection kind, touchpoint, slot; per count column group, column, selection,
    lower, upper; per lower bound floor, back, lifetime; per latest column group, column,
    selection; per family read from the day counts its scope's kind; per day window family,
    group, column, days."""
    if p.shape[0] < HEADER:
        raise ValueError("program: no header")
    out.n_groups, out.n_sel, out.n_fam = p[0], p[1], p[2]
    out.n_counts, out.n_lower, out.n_lasts, out.n_days = p[3], p[4], p[5], p[6]
    cdef Py_ssize_t size = (
        HEADER + 3 * out.n_groups + 3 * out.n_sel + 5 * out.n_counts + 3 * out.n_lower
        + 3 * out.n_lasts + out.n_fam + 4 * out.n_days
    )
    if p.shape[0] != size or out.n_groups > MAX_GROUPS or out.n_sel > MAX_SELECTIONS:
        raise ValueError(f"program: {p.shape[0]} values for a layout of {size}")
    cdef const int64_t *at = &p[HEADER]
    out.group_target = at
    out.group_any = at + out.n_groups
    out.width = at + 2 * out.n_groups
    at += 3 * out.n_groups
    out.sel_kind = at
    out.sel_touchpoint = at + out.n_sel
    out.sel_slot = at + 2 * out.n_sel
    at += 3 * out.n_sel
    out.count_group = at
    out.count_column = at + out.n_counts
    out.count_selection = at + 2 * out.n_counts
    out.count_lower = at + 3 * out.n_counts
    out.count_upper = at + 4 * out.n_counts
    at += 5 * out.n_counts
    out.lower_floor = at
    out.lower_back = at + out.n_lower
    out.lower_lifetime = at + 2 * out.n_lower
    at += 3 * out.n_lower
    out.last_group = at
    out.last_column = at + out.n_lasts
    out.last_selection = at + 2 * out.n_lasts
    at += 3 * out.n_lasts
    out.fam_scope = at
    at += out.n_fam
    out.day_family = at
    out.day_group = at + out.n_days
    out.day_column = at + 2 * out.n_days
    out.day_days = at + 3 * out.n_days
    cdef Py_ssize_t k
    for k in range(out.n_groups):
        if not 0 <= out.group_target[k] < 6:
            raise ValueError(f"program: group {k} reads no ad tuple column")
    for k in range(out.n_counts):
        if not (0 <= out.count_group[k] < out.n_groups and 0 <= out.count_lower[k] < out.n_lower
                and 0 <= out.count_selection[k] < out.n_sel
                and 0 <= out.count_column[k] < out.width[out.count_group[k]]):
            raise ValueError(f"program: count column {k} out of range")
    for k in range(out.n_lasts):
        if not (0 <= out.last_group[k] < out.n_groups and 0 <= out.last_selection[k] < out.n_sel
                and 0 <= out.last_column[k] < out.width[out.last_group[k]]):
            raise ValueError(f"program: latest column {k} out of range")
    for k in range(out.n_days):
        if not (0 <= out.day_family[k] < out.n_fam and 0 <= out.day_group[k] < out.n_groups
                and 0 <= out.day_column[k] < out.width[out.day_group[k]]):
            raise ValueError(f"program: day window {k} out of range")
    return 0


cdef void _code(const uint64_t[::1] fps, const uint64_t[::1] names, int64_t *codes,
                int64_t *slots, Py_ssize_t mask):
    """Each name's code: its fingerprint's position in ``fps`` plus one (0: null, unknown);
    through an open-addressing hash of the dictionary (fingerprints are uniform already)."""
    cdef Py_ssize_t i, at
    cdef uint64_t fp
    for i in range(mask + 1):
        slots[i] = -1
    for i in range(fps.shape[0]):
        at = <Py_ssize_t> (fps[i] & <uint64_t> mask)
        while slots[at] >= 0 and fps[slots[at]] != fps[i]:
            at = (at + 1) & mask
        if slots[at] < 0:  # a repeated fingerprint keeps its first position
            slots[at] = i
    for i in range(names.shape[0]):
        fp = names[i]
        codes[i] = 0
        if fp == 0:
            continue
        at = <Py_ssize_t> (fp & <uint64_t> mask)
        while slots[at] >= 0:
            if fps[slots[at]] == fp:
                codes[i] = slots[at] + 1
                break
            at = (at + 1) & mask


def count(
    double[::1] flat,
    const int64_t[::1] group_base,
    const int64_t[::1] program,
    const int64_t[::1] sizes,
    const uint64_t[::1] names,
    int64_t t0,
    bint inclusive,
    int64_t latest_from,
    const Event[::1] events,
    const uint16_t[:, ::1] tuples,
    const uint64_t[::1] fps,
    const DayGroup[::1] day_head,
    const uint8_t[::1] day_body,
    int64_t day_base,
):
    """Add a household's events into a read's answers ``flat`` (group ``g``'s row ``r`` at
    ``group_base[g] + r * width[g]``), in place.

    Args:
        program: the shape's layout (see :func:`_program`).
        sizes: per group, the plan's fields.
        names: the fingerprints of the read's ids: its user, device, each selection's
            touchpoint and slot, each family read from the day counts, then the fields group
            after group (``sizes``).
        t0, inclusive: the read's time; an inclusive read (an atomic check's) also counts the
            events at or after it.
        latest_from: a latest time is taken from the events at or after it only.
        events, tuples, fps: the household's log (``eventlog.Log``: tuples with the null one
            first, the dictionary's fingerprints).
        day_head, day_body, day_base: its day counts (``eventlog._day_parts``: per family and
            scope code its runs): a day window adds its family's (of the read's scope id) days
            from the one ``days - 1`` before ``t0``'s on; 0 days, the lifetime count.
    """
    cdef Program pg
    _program(program, &pg)
    cdef Py_ssize_t n_groups = pg.n_groups, n_sel = pg.n_sel
    cdef Py_ssize_t n_codes = fps.shape[0] + 1, n_tuples = tuples.shape[0]
    cdef Py_ssize_t first_field = 2 + 2 * n_sel + pg.n_fam
    cdef Py_ssize_t g, i, j, e, k, at
    if group_base.shape[0] != n_groups or sizes.shape[0] != n_groups:
        raise ValueError("group_base, sizes: one per group of the program expected")
    if tuples.shape[1] != 6:
        raise ValueError("tuples: 6 codes a row expected")
    at = first_field
    for g in range(n_groups):
        if sizes[g] < 0 or group_base[g] < 0 or (
            group_base[g] + (sizes[g] + 1) * pg.width[g] > flat.shape[0]
        ):
            raise ValueError(f"group {g}: its rows past the answers")
        at += sizes[g]
    if names.shape[0] != at:
        raise ValueError(f"names: {at} expected, {names.shape[0]} given")
    for i in range(n_tuples):  # every code a tuple holds indexes the table below
        for j in range(6):
            if tuples[i, j] >= n_codes:
                raise ValueError(f"tuple {i}: code {tuples[i, j]} past the dictionary")
    cdef Py_ssize_t mask = 1
    while mask < 2 * n_codes:
        mask <<= 1
    # scratch: the dictionary's hash, the columns' bounds, the names' codes, and per group
    # and code the row of the code's field (-1: none)
    cdef Py_ssize_t size = mask + 2 * (pg.n_counts + 1) + names.shape[0] + n_groups * n_codes
    cdef int64_t *work = <int64_t *> malloc(size * sizeof(int64_t))
    if work == NULL:
        raise MemoryError()
    cdef int64_t *lo = work + mask
    cdef int64_t *hi = lo + pg.n_counts + 1
    cdef int64_t *codes = hi + pg.n_counts + 1
    cdef int64_t *table = codes + names.shape[0]
    cdef int64_t last_before = INT64_MAX if inclusive else t0
    cdef int64_t sel_code[MAX_SELECTIONS]
    cdef int64_t sel_touchpoint[MAX_SELECTIONS]
    cdef int64_t sel_slot[MAX_SELECTIONS]
    cdef int64_t row[MAX_GROUPS]
    cdef bint chosen[MAX_SELECTIONS]
    cdef int64_t code, te, r, kind, user, device
    cdef uint16_t a, p
    cdef double *cell
    try:
        _code(fps, names, codes, work, mask - 1)
        user, device = codes[0], codes[1]
        for k in range(n_sel):
            kind = pg.sel_kind[k]
            code = user if kind == 1 else device if kind == 2 else 0
            sel_code[k] = code if code else -1  # an id the log does not know matches none
            sel_touchpoint[k] = codes[2 + 2 * k] if pg.sel_touchpoint[k] else -1
            sel_slot[k] = codes[3 + 2 * k] if pg.sel_slot[k] else -1
        for k in range(pg.n_counts):
            j = pg.count_lower[k]
            if pg.lower_lifetime[j]:
                lo[k] = INT64_MIN
            else:
                lo[k] = (t0 // pg.lower_floor[j]) * pg.lower_floor[j] - pg.lower_back[j]
            hi[k] = INT64_MAX if inclusive or pg.count_upper[k] else t0
        at = first_field
        for g in range(n_groups):
            table[g * n_codes] = -1
            for i in range(1, n_codes):
                table[g * n_codes + i] = 0 if pg.group_any[g] else -1
            if not pg.group_any[g]:
                for j in range(sizes[g]):
                    code = codes[at + j]
                    if code > 0:
                        table[g * n_codes + code] = j
            at += sizes[g]
        for e in range(events.shape[0]):
            te = events[e].t
            a = events[e].ad
            p = events[e].ctx
            if a >= n_tuples or p >= n_tuples:
                raise ValueError(f"event {e}: a tuple code past the household's tuples")
            for k in range(n_sel):
                kind = pg.sel_kind[k]
                if kind == 0:
                    chosen[k] = True
                elif kind == 1:
                    chosen[k] = tuples[p, 0] == sel_code[k]
                else:
                    chosen[k] = tuples[p, 1] == sel_code[k]
                if chosen[k] and sel_touchpoint[k] >= 0:
                    chosen[k] = tuples[p, 2] == sel_touchpoint[k]
                if chosen[k] and sel_slot[k] >= 0:
                    chosen[k] = tuples[p, 3] == sel_slot[k]
            for g in range(n_groups):  # the any group's one field: every ad, whatever ids it records
                if pg.group_any[g]:
                    row[g] = 0 if a > 0 else -1
                else:
                    row[g] = table[g * n_codes + tuples[a, pg.group_target[g]]]
            for k in range(pg.n_counts):
                g = pg.count_group[k]
                r = row[g]
                if r >= 0 and chosen[pg.count_selection[k]] and lo[k] < te < hi[k]:
                    flat[group_base[g] + r * pg.width[g] + pg.count_column[k]] += 1.0
            if te >= last_before or te < latest_from:
                continue
            for k in range(pg.n_lasts):
                g = pg.last_group[k]
                r = row[g]
                if r >= 0 and chosen[pg.last_selection[k]]:
                    cell = &flat[group_base[g] + r * pg.width[g] + pg.last_column[k]]
                    if te > cell[0]:
                        cell[0] = <double> te
        _days(flat, group_base, &pg, codes, t0, day_head, day_body, day_base, table, n_codes)
    finally:
        free(work)


cdef inline int64_t _number(const uint8_t[::1] body, Py_ssize_t *at, Py_ssize_t end) except -1:
    """The unsigned LEB128 number at ``at[0]`` (moved past it), which must end before ``end``."""
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef uint8_t byte
    while True:
        if at[0] >= end or shift > 56:
            raise ValueError(f"day counts: a number at byte {at[0]} runs past its group")
        byte = body[at[0]]
        at[0] += 1
        value |= (<uint64_t> (byte & 0x7F)) << shift
        if not byte & 0x80:
            return <int64_t> value
        shift += 7


cdef inline int64_t _run_head(
    const uint8_t[::1] body, Py_ssize_t *at, Py_ssize_t end, int64_t previous, int64_t n_codes,
    bint *life,
) except -1:
    """A run's first number: how far its target's code rises over the previous run's (over 0
    for a group's first run) times 2, plus 1 when a lifetime count follows. The code."""
    cdef int64_t head = _number(body, at, end)
    cdef int64_t target = previous + (head >> 1)
    if not previous < target < n_codes:
        raise ValueError(f"day counts: a run names code {target}")
    life[0] = head & 1
    return target


cdef inline int64_t _day_entry(
    const uint8_t[::1] body, Py_ssize_t *at, Py_ssize_t end, int64_t *day
) except -1:
    """One day of a run (newest first): its number is how many days before the previous one
    it is (the first: before the base, the string's newest day) times 8, plus its count less
    one when under 8; 7 says the count is 8 plus the number after. Moves ``day``; the count."""
    cdef int64_t v = _number(body, at, end)
    cdef int64_t got = (v & 7) + 1
    day[0] -= v >> 3
    if got == 8:
        got += _number(body, at, end)
    return got


cdef Py_ssize_t _group_end(const DayGroup[::1] day_head, Py_ssize_t h, Py_ssize_t size) except -1:
    cdef Py_ssize_t end = <Py_ssize_t> day_head[h].start + <Py_ssize_t> day_head[h].n
    if end > size:
        raise ValueError(f"day counts: group {h} past the body")
    return end


cdef void _days(
    double[::1] flat,
    const int64_t[::1] group_base,
    Program *pg,
    const int64_t *codes,
    int64_t t0,
    const DayGroup[::1] day_head,
    const uint8_t[::1] day_body,
    int64_t day_base,
    const int64_t *table,
    int64_t n_codes,
) except *:
    """Add the day counts of the impressions folded out of the log to the day windows (and
    lifetime counts) of a read: per window, the runs of its family and scope id."""
    cdef Py_ssize_t first_fam = 2 + 2 * pg.n_sel, k, h, found, at, end
    cdef int64_t fam, scope, kind, r, g, day, n, i, target, life, got, weight
    cdef int64_t user = codes[0], device = codes[1]
    cdef int64_t today = t0 // 86_400_000_000
    cdef int64_t since
    cdef bint has_life
    for k in range(pg.n_days):
        fam = codes[first_fam + pg.day_family[k]]
        kind = pg.fam_scope[pg.day_family[k]]
        scope = user if kind == 1 else device if kind == 2 else 0
        if fam == 0 or (kind != 0 and scope == 0):
            continue  # a family or scope id the dictionary does not know has no day counts
        found = -1
        for h in range(day_head.shape[0]):  # the last group of the family and scope
            if day_head[h].fam == fam and day_head[h].scope == scope:
                found = h
        if found < 0:
            continue
        at = day_head[found].start
        end = _group_end(day_head, found, day_body.shape[0])
        g = pg.day_group[k]
        since = today - pg.day_days[k] + 1
        target = 0
        while at < end:  # one run a target
            target = _run_head(day_body, &at, end, target, n_codes, &has_life)
            life = _number(day_body, &at, end) if has_life else 0
            n = _number(day_body, &at, end)
            day = day_base
            weight = 0
            for i in range(n):
                got = _day_entry(day_body, &at, end, &day)
                if day >= since:
                    weight += got
            if pg.day_days[k] == 0:
                weight = life
            r = table[g * n_codes + target]
            if r >= 0 and weight:
                flat[group_base[g] + r * pg.width[g] + pg.day_column[k]] += <double> weight


def day_records(const uint8_t[::1] day_body, Py_ssize_t start, Py_ssize_t end, int64_t day_base):
    """The records of one group's runs (``eventlog._day_parts``) as three int64 lists turned
    arrays: target codes, days (0 for a lifetime count) and counts (a fold reads them)."""
    import numpy as np

    if not 0 <= start <= end <= day_body.shape[0]:
        raise ValueError(f"day counts: group bytes {start}..{end} past the body")
    cdef Py_ssize_t at = start
    cdef int64_t target = 0, n, i, day, got
    cdef bint has_life
    targets, days, counts = [], [], []
    while at < end:
        target = _run_head(day_body, &at, end, target, INT64_MAX, &has_life)
        if has_life:
            targets.append(target)
            days.append(0)
            counts.append(_number(day_body, &at, end))
        n = _number(day_body, &at, end)
        day = day_base
        for i in range(n):
            got = _day_entry(day_body, &at, end, &day)
            targets.append(target)
            days.append(day)
            counts.append(got)
    return (
        np.asarray(targets, dtype=np.int64),
        np.asarray(days, dtype=np.int64),
        np.asarray(counts, dtype=np.int64),
    )


def place(
    double[:, ::1] out,
    const double[::1] base_row,
    const double[::1] flat,
    const int64_t[::1] offsets,
    const int64_t[:, ::1] safe_rows,
    const int64_t[::1] last_row,
    const int64_t[::1] gather,
    const int64_t[::1] since,
    const int64_t[::1] guards,
    int64_t t_us,
    bint nulls,
):
    """Place a read's answers in the candidates' rows (``store.place``), in place: each row
    starts from ``base_row``; each gathered answer comes from the candidate's row of its group
    (``safe_rows``: a null id reads the group's last, default row, where a refusing answer
    becomes NaN when ``nulls``); the latest times of ``since`` become seconds before ``t_us``
    (none, a negative time: NaN; nor where the column ``guards`` names for it, if any, is 0:
    a campaign recency with no exposure in its window).

    Args:
        gather: per gathered answer, five blocks of equal length: its group, its column in
            the group's rows, the group's width, its column in ``out``, and 1 if a null id
            refuses it.
    """
    cdef Py_ssize_t n = out.shape[0], width = out.shape[1], n_groups = offsets.shape[0]
    cdef Py_ssize_t k_all = gather.shape[0] // 5, i, k, c
    cdef int64_t g, r, cell
    cdef double v
    if gather.shape[0] != 5 * k_all:
        raise ValueError("gather: five blocks of equal length expected")
    if base_row.shape[0] != width or safe_rows.shape[0] != n or safe_rows.shape[1] != n_groups:
        raise ValueError("base_row, safe_rows: one column per output, one row per candidate")
    if last_row.shape[0] != n_groups:
        raise ValueError("last_row: one per group expected")
    cdef const int64_t *group = &gather[0] if k_all else NULL
    cdef const int64_t *src = group + k_all
    cdef const int64_t *step = group + 2 * k_all
    cdef const int64_t *dest = group + 3 * k_all
    cdef const int64_t *refuse = group + 4 * k_all
    for k in range(k_all):
        if not (0 <= group[k] < n_groups and 0 <= dest[k] < width and 0 <= src[k] < step[k]):
            raise ValueError(f"gather: answer {k} out of range")
        g = group[k]
        if offsets[g] < 0 or offsets[g] + (last_row[g] + 1) * step[k] > flat.shape[0]:
            raise ValueError(f"gather: group {g}'s rows past the answers")
    if guards.shape[0] != since.shape[0]:
        raise ValueError("guards: one per since column expected")
    for k in range(since.shape[0]):
        if not (0 <= since[k] < width and -1 <= guards[k] < width):
            raise ValueError(f"since: column {since[k]} or its guard out of range")
    for i in range(n):
        for c in range(width):
            out[i, c] = base_row[c]
        for k in range(k_all):
            g = group[k]
            r = safe_rows[i, g]
            if r < 0 or r > last_row[g]:
                raise ValueError(f"safe_rows: candidate {i} reads row {r} of group {g}")
            if nulls and refuse[k] and r == last_row[g]:
                out[i, dest[k]] = NAN
            else:
                out[i, dest[k]] = flat[offsets[g] + r * step[k] + src[k]]
        for k in range(since.shape[0]):
            v = out[i, since[k]]
            if v < 0 or (guards[k] >= 0 and out[i, guards[k]] == 0):
                out[i, since[k]] = NAN
            else:
                out[i, since[k]] = (<double> t_us - v) / 1e6
