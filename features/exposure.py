"""Exposure counts: how often a user, household or device saw a campaign, an advertiser or any ad.

Definitions (the contract shared with the online counters and the Redis cap store):

* An *exposure* is a shown candidate (``shown`` true) at its row's ``ts``.
* ``exp_{scope}_{target}_{window}`` for a row at time ``t`` counts exposures ``e`` of the same
  scope id (``user_id``, ``household_id`` or ``device_id``) and, for ``campaign`` and
  ``advertiser`` targets, the same target id, with ``t - window < e.ts < t``. Exposures at the
  row's own timestamp (the same request, e.g. the other ads of a pod) never count: a row sees
  only impressions strictly before it.
* ``since_{scope}_campaign_s`` is ``t - e.ts`` in seconds for the latest such exposure to the same
  campaign (no window), null when there is none.
* A null scope id or target id counts nothing: its counts are 0 and its recency null.

Offline, :func:`point_in_time_exposures` computes these over a whole log with sorted searches
(no loop over rows). Online, the caller hands in the same columns (see ``features.history`` for the
in-memory reference counter and, later, the Redis cap store).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

SCOPES: dict[str, str] = {"user": "user_id", "household": "household_id", "device": "device_id"}
TARGETS: dict[str, str | None] = {
    "campaign": "campaign_id",
    "advertiser": "advertiser_id",
    "any": None,
}
WINDOWS_S: dict[str, int] = {"1h": 3_600, "24h": 86_400, "7d": 604_800}
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


@dataclass(frozen=True)
class _KeyCounts:
    counts: list[np.ndarray]  # one int array per window, in WINDOWS_S order
    since_s: np.ndarray | None  # float seconds, NaN when no earlier exposure


def _count(
    key: np.ndarray, valid: np.ndarray, t: np.ndarray, shown: np.ndarray, want_since: bool
) -> _KeyCounts:
    """Counts for rows sorted by time, keyed by ``key`` (rows with ``valid`` false count 0).

    One stable argsort puts rows in (key, time) order; a composite ``group * span + time`` is then
    sorted, so every count is a difference of two ``searchsorted`` positions among the events.
    """
    n = len(key)
    order = (
        pl.DataFrame({"k": key})
        .select(pl.arg_sort_by("k", maintain_order=True))
        .to_series()
        .to_numpy()
    )
    k, ts = key[order], t[order]
    is_event = (shown & valid)[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = k[1:] != k[:-1]
    group = np.cumsum(new_group, dtype=np.int64) - 1
    t0 = int(t.min()) - _MAX_WINDOW_US - 1 if n else 0
    span = (int(t.max()) - t0 + 1) if n else 1
    if (int(group[-1]) + 1 if n else 0) * span >= 2**62:
        raise OverflowError("log too long or too many keys for one pass")  # ~100 days x 1e6 keys
    comp = group * span + (ts - t0)
    ev_comp = comp[is_event]
    n_before = np.searchsorted(ev_comp, comp, side="left")
    counts = []
    for seconds in WINDOWS_S.values():
        n_old = np.searchsorted(ev_comp, comp - seconds * _US, side="right")
        c = np.empty(n, dtype=np.int32)
        c[order] = n_before - n_old
        c[~valid] = 0
        counts.append(c)
    since = None
    if want_since:
        last = n_before - 1
        ev_group, ev_ts = group[is_event], ts[is_event]
        has = last >= 0
        has[has] = ev_group[last[has]] == group[has]
        sorted_since = np.full(n, np.nan)
        sorted_since[has] = (ts[has] - ev_ts[last[has]]) / _US
        since = np.empty(n)
        since[order] = sorted_since
        since[~valid] = np.nan
    return _KeyCounts(counts, since)


def _codes(frame: pl.DataFrame, columns: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exact integer codes of id columns (any strings) and their not-null masks."""
    coded = frame.select(
        [pl.col(c).cast(pl.String).cast(pl.Categorical).to_physical().alias(c) for c in columns]
    )
    return {
        c: (coded[c].fill_null(0).cast(pl.UInt64).to_numpy(), coded[c].is_not_null().to_numpy())
        for c in columns
    }


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
    shown = frame["shown"].to_numpy()
    codes = _codes(frame, [*SCOPES.values(), "campaign_id", "advertiser_id"])
    # Request-level ("any" target) counts once per run of a request's rows.
    run = frame["request_id"].rle_id().to_numpy()
    firsts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]]) if len(run) else run
    # A run's impressions all share its time, so it counts as one row with its shown total.
    run_shown = np.add.reduceat(shown.astype(np.int64), firsts) if len(run) else shown

    def one_key(key: ExposureKey) -> _KeyCounts:
        scope, valid = codes[SCOPES[key.scope]]
        target_col = TARGETS[key.target]
        if target_col is None:
            res = _count_runs(scope[firsts], valid[firsts], t[firsts], run_shown)
            return _KeyCounts([c[run] for c in res.counts], None)
        target, target_valid = codes[target_col]
        combined = scope * np.uint64(1 << 32) + target
        return _count(combined, valid & target_valid, t, shown, key.target == "campaign")

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


def _count_runs(
    key: np.ndarray, valid: np.ndarray, t: np.ndarray, n_shown: np.ndarray
) -> _KeyCounts:
    """Like ``_count`` for one row per request run carrying its number of impressions."""
    expanded = np.repeat(np.arange(len(key)), n_shown)
    # Repeat each run once per impression (events) and keep the run itself as the query.
    rows = np.concatenate([np.arange(len(key)), expanded])
    is_event = np.r_[np.zeros(len(key), dtype=bool), np.ones(len(expanded), dtype=bool)]
    order = np.argsort(t[rows], kind="stable")
    rows, is_event = rows[order], is_event[order]
    res = _count(key[rows], valid[rows], t[rows], is_event, want_since=False)
    query = ~is_event
    back = np.empty(len(key), dtype=np.int64)
    back[rows[query]] = np.flatnonzero(query)
    return _KeyCounts([c[back] for c in res.counts], None)
