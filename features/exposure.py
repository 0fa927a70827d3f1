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

Offline, :func:`point_in_time_exposures` computes these over a whole log with as-of joins (no
loop over rows). Online, the caller hands in the same columns (see ``features.history`` for the
in-memory reference counter and, later, the Redis cap store).
"""

from __future__ import annotations

from dataclasses import dataclass

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

_EV_TS = "__ev_ts"
_EV_N = "__ev_n"


def _event_counts(log: pl.LazyFrame, key: ExposureKey) -> pl.LazyFrame:
    """Per key and exposure time: the running number of exposures up to and including it."""
    ids = key.id_columns
    return (
        log.filter(pl.col("shown") & pl.all_horizontal(pl.col(ids).is_not_null()))
        .group_by([*ids, "ts"])
        .agg(pl.len().cast(pl.Int64).alias("__n"))
        .sort("ts")
        .select(
            *ids,
            pl.col("ts").alias(_EV_TS),
            pl.col("__n").cum_sum().over(ids).alias(_EV_N),
        )
    )


def _counts_for(queries: pl.LazyFrame, events: pl.LazyFrame, key: ExposureKey) -> pl.LazyFrame:
    """Add this key's count (and recency) columns to ``queries`` (sorted by ts)."""
    ids = key.id_columns
    before = queries.join_asof(
        events,
        left_on="ts",
        right_on=_EV_TS,
        by=ids,
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    ).with_columns(pl.col(_EV_N).fill_null(0).alias("__n_lt"))
    out = before
    for window, seconds in WINDOWS_S.items():
        edge = f"__edge_{window}"
        out = (
            out.with_columns((pl.col("ts") - pl.duration(seconds=seconds)).alias(edge))
            .join_asof(
                events.select(
                    *ids, pl.col(_EV_TS).alias(f"{edge}_ts"), pl.col(_EV_N).alias(f"{edge}_n")
                ),
                left_on=edge,
                right_on=f"{edge}_ts",
                by=ids,
                strategy="backward",
                allow_exact_matches=True,
                check_sortedness=False,
            )
            .with_columns(
                (pl.col("__n_lt") - pl.col(f"{edge}_n").fill_null(0))
                .cast(COUNT_DTYPE)
                .alias(count_column(key.scope, key.target, window))
            )
            .drop(edge, f"{edge}_ts", f"{edge}_n")
        )
    if key.target == "campaign":
        since = (pl.col("ts") - pl.col(_EV_TS)).dt.total_microseconds() / 1_000_000
        out = out.with_columns(since.cast(SINCE_DTYPE).alias(since_column(key.scope)))
    return out.drop(_EV_TS, _EV_N, "__n_lt")


def point_in_time_exposures(log: pl.LazyFrame) -> pl.LazyFrame:
    """Add every exposure column to a log, point-in-time correct.

    Args:
        log: a conformed log (see ``features.logio.conform``). Rows need not be sorted.

    Returns:
        The log sorted by ``ts`` (stable: ties keep their input order) with the columns of
        ``EXPOSURE_SCHEMA`` appended. Null ids count nothing (0, and null recency).
    """
    log = log.sort("ts", maintain_order=True)
    out = log
    for key in EXPOSURE_KEYS:
        events = _event_counts(log, key)
        if key.target == "any":
            # Request-level: one query per (scope id, ts), joined back to the candidate rows.
            ids = key.id_columns
            queries = log.select(*ids, "ts").unique(maintain_order=True)
            counts = _counts_for(queries, events, key)
            out = out.join(
                counts, on=[*ids, "ts"], how="left", nulls_equal=True, maintain_order="left"
            )
        else:
            out = _counts_for(out, events, key)
    return out.with_columns(
        [_null_key_zero(k, w) for k in EXPOSURE_KEYS for w in WINDOWS_S]
        + [
            pl.when(pl.all_horizontal(pl.col(ExposureKey(s, "campaign").id_columns).is_not_null()))
            .then(pl.col(since_column(s)))
            .alias(since_column(s))
            for s in SCOPES
        ]
    )


def _null_key_zero(key: ExposureKey, window: str) -> pl.Expr:
    name = count_column(key.scope, key.target, window)
    known = pl.all_horizontal(pl.col(key.id_columns).is_not_null())
    return pl.when(known).then(pl.col(name).fill_null(0)).otherwise(0).cast(COUNT_DTYPE).alias(name)
