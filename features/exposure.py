"""Exposure counts: how often a user, household or device saw a campaign, an advertiser or any ad.

Definitions (the contract shared with the online counters and the Redis cap store):

* An *exposure* is a shown candidate (``shown`` true) at its row's ``ts``.
* ``exp_{scope}_{target}_{window}`` for a row at time ``t`` counts exposures ``e`` of the same
  scope id (``user_id``, ``household_id`` or ``device_id``) and, for ``campaign`` and
  ``advertiser`` targets, the same target id, with ``window_start(t) <= e.ts < t``
  (``t - 1h < e.ts`` for ``1h``). ``1h`` is a sliding window; ``24h`` and ``7d`` go by UTC hours
  and days (``BUCKET_S``): they start at the start of the hour (day) 23 hours (6 days) before
  ``t``'s, so they span 23-24 hours (6-7 days): the store keeps a count per hour and per day
  for them, not every time, so a write does not grow with a user's history. Exposures at the
  row's own timestamp (the same request, e.g. the other ads of a pod) never count: a row sees
  only impressions strictly before it.
* ``since_{scope}_campaign_s`` is ``t - e.ts`` in seconds for the latest such exposure to the same
  campaign within the ``24h`` window (``RECENCY_WINDOW``), null when there is none: it is null
  exactly where ``exp_{scope}_campaign_24h`` is 0. The cap store keeps every impression only
  for as long as some reader counts it exactly (a day or two with the shipped rules; older
  ones as day counts): a longer look back would make it keep every campaign's latest
  impression of every user and device (issue 18), for a signal the 7-day counts carry.
* A null scope id or target id counts nothing: its counts are 0 and its recency null.

Offline, :func:`point_in_time_exposures` computes these over a whole log by sorting each key's
rows once and merging its impressions in (see ``features.counting``; no loop over rows). Online,
the caller hands in the same columns (see ``features.history`` for the in-memory reference
counter and, later, the Redis cap store).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from features import counting

SCOPES: dict[str, str] = {"user": "user_id", "household": "household_id", "device": "device_id"}
TARGETS: dict[str, str | None] = {
    "campaign": "campaign_id",
    "advertiser": "advertiser_id",
    "any": None,
}
WINDOWS_S: dict[str, int] = {"1h": 3_600, "24h": 86_400, "7d": 604_800}
BUCKET_S: dict[str, int] = {"1h": 0, "24h": 3_600, "7d": 86_400}  # 0: a sliding window
RECENCY_WINDOW = "24h"  # the campaign recency looks back as far as this window counts
COUNT_DTYPE = pl.Int32()
SINCE_DTYPE = pl.Float64()


@dataclass(frozen=True)
class ExposureKey:
    """A (scope, target) pair, e.g. household x advertiser."""

    scope: str
    target: str

    @property
    def id_columns(self) -> list[str]:
        target_col = TARGETS[self.target]
        return [SCOPES[self.scope]] + ([target_col] if target_col else [])


EXPOSURE_KEYS: tuple[ExposureKey, ...] = tuple(ExposureKey(s, t) for s in SCOPES for t in TARGETS)


def count_column(scope: str, target: str, window: str) -> str:
    """Name of the exposure-count column for a scope, target and window."""
    return f"exp_{scope}_{target}_{window}"


def since_column(scope: str) -> str:
    """Name of the seconds-since-last-campaign-exposure column for a scope."""
    return f"since_{scope}_campaign_s"


COUNT_COLUMNS: tuple[str, ...] = tuple(
    count_column(k.scope, k.target, w) for k in EXPOSURE_KEYS for w in WINDOWS_S
)
SINCE_COLUMNS: tuple[str, ...] = tuple(since_column(s) for s in SCOPES)
EXPOSURE_SCHEMA: pl.Schema = pl.Schema(
    [(c, COUNT_DTYPE) for c in COUNT_COLUMNS] + [(c, SINCE_DTYPE) for c in SINCE_COLUMNS]
)

_US = 1_000_000
_MAX_WINDOW_US = max(WINDOWS_S.values()) * _US


def window_start(t_us: np.ndarray | int, window: str) -> np.ndarray:
    """Where a bucketed window (``BUCKET_S``) opens for rows at ``t_us``: the start of the UTC
    hour or day ``window / bucket - 1`` buckets before ``t``'s (exposures at or after it count)."""
    bucket = BUCKET_S[window] * _US
    if not bucket:
        raise ValueError(f"{window} is a sliding window")
    n = WINDOWS_S[window] * _US // bucket
    return (np.asarray(t_us, dtype=np.int64) // bucket - (n - 1)) * bucket


def window_floor(t_us: np.ndarray | int, window: str) -> tuple[np.ndarray, bool]:
    """The lowest time a window at ``t_us`` counts, and whether a time equal to it counts:
    ``window_start`` for a bucketed window (inclusive), ``t - window`` for a sliding one (not)."""
    if BUCKET_S[window]:
        return window_start(t_us, window), True
    return np.asarray(t_us, dtype=np.int64) - WINDOWS_S[window] * _US, False


@dataclass(frozen=True)
class _KeyCounts:
    counts: list[np.ndarray]  # one int32 array per window, in WINDOWS_S order
    since_s: np.ndarray | None  # float seconds, NaN when no earlier exposure


def _window_counts(
    line: counting.Line, events: np.ndarray, origin: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Events strictly before each row, and per window the events inside it (sorted order)."""
    rows = line.pos
    before = counting.events_left_of(rows, events, 0, inclusive=False)
    counts = []
    for window, seconds in WINDOWS_S.items():
        if not BUCKET_S[window]:
            counts.append(before - counting.events_left_of(rows, events, seconds * _US, True))
            continue
        # a bucketed window opens at a time of its own per row: the same key's events from
        # there on (never below the key's start on the line: offsets are >= 1)
        opens = window_start(rows - line.base + origin, window) - origin
        lower = np.searchsorted(events, line.base + np.maximum(opens, 0), side="left")
        counts.append((before - lower).astype(np.int32))
    return before, counts


def _count(
    codes: counting.Codes,
    offset: np.ndarray,
    shown: np.ndarray,
    span: int,
    want_since: bool,
    origin: int,
) -> _KeyCounts:
    """Counts for rows in time order keyed by ``codes`` (null keys count nothing)."""
    line = counting.line(codes, offset, span)
    events = line.pos[(shown & codes.valid)[line.order]]
    before, counts = _window_counts(line, events, origin)
    since = None
    if want_since:
        dist = counting.since_last(line, events, before) / _US
        dist[counts[list(WINDOWS_S).index(RECENCY_WINDOW)] == 0] = np.nan  # none in the window
        since = counting.unsort(dist, line.order, float)
    return _KeyCounts([counting.unsort(c, line.order, np.int32) for c in counts], since)


def _count_runs(
    codes: counting.Codes, offset: np.ndarray, n_shown: np.ndarray, span: int, origin: int
) -> _KeyCounts:
    """Like ``_count`` for one row per request run carrying its number of impressions."""
    line = counting.line(codes, offset, span)
    weight = np.where(codes.valid, n_shown, 0)[line.order]
    events = np.repeat(line.pos, weight)  # each impression of a run at the run's position
    _, counts = _window_counts(line, events, origin)
    return _KeyCounts([counting.unsort(c, line.order, np.int32) for c in counts], None)


def point_in_time_exposures(log: pl.LazyFrame) -> pl.LazyFrame:
    """Add every exposure column to a log, point-in-time correct.

    Args:
        log: a conformed log (see ``features.logio.conform``). Rows need not be sorted.

    Returns:
        The log sorted by ``ts`` (stable: ties keep their input order) with the columns of
        ``EXPOSURE_SCHEMA`` appended. Null ids count nothing (0, and null recency). The log is
        materialised: counting needs every earlier impression.
    """
    frame = log.collect()
    if not frame["ts"].is_sorted():
        frame = frame.sort("ts", maintain_order=True)
    t = frame["ts"].dt.epoch("us").to_numpy()
    origin = int(t.min()) - 1 if len(t) else 0
    offset = t - origin  # >= 1
    span = (int(t.max()) - origin if len(t) else 0) + _MAX_WINDOW_US + 1
    shown = frame["shown"].to_numpy()
    codes = counting.dense_codes(frame, [*SCOPES.values(), "campaign_id", "advertiser_id"])
    # Request-level ("any" target) counts once per run of a request's rows.
    run = frame["request_id"].rle_id().to_numpy()
    firsts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]]) if len(run) else run
    # A run's impressions all share its time, so it counts as one row with its shown total.
    run_shown = np.add.reduceat(shown.astype(np.int64), firsts) if len(run) else run

    def one_key(key: ExposureKey) -> _KeyCounts:
        scope = codes[SCOPES[key.scope]]
        target_col = TARGETS[key.target]
        if target_col is None:
            at_firsts = counting.Codes(scope.code[firsts], scope.size, scope.valid[firsts])
            res = _count_runs(at_firsts, offset[firsts], run_shown, span, origin)
            return _KeyCounts([c[run] for c in res.counts], None)
        pair = counting.pair_codes(scope, codes[target_col])
        return _count(pair, offset, shown, span, key.target == "campaign", origin)

    # numpy releases the GIL while sorting and searching: key types run side by side.
    with ThreadPoolExecutor(max_workers=pl.thread_pool_size()) as pool:
        results = list(pool.map(one_key, EXPOSURE_KEYS))
    out: dict[str, np.ndarray] = {}
    for key, res in zip(EXPOSURE_KEYS, results, strict=True):
        for window, c in zip(WINDOWS_S, res.counts, strict=True):
            out[count_column(key.scope, key.target, window)] = c
        if res.since_s is not None:
            out[since_column(key.scope)] = res.since_s
    series = [
        pl.Series(name, out[name], nan_to_null=True).cast(dtype)
        for name, dtype in EXPOSURE_SCHEMA.items()
    ]
    return frame.with_columns(series).lazy()
