"""An independent check that a replay's selections kept every cap, gap and feedback block.

It does not ask the engine or its store: it recounts, from the exposure history the replay
recorded, what each rule allowed at the moment of each selection, with the semantics
``docs/caps.md`` documents. A selection at time ``t`` breaks

* a cap if the family already had ``limit`` exposures in the window: ``(t - window, t)`` for
  windows up to the store's retention, the last ``ceil(window / 1 day)`` UTC days up to ``t``
  for longer ones, everything before ``t`` for lifetime;
* a minimum gap (stream separation's too: by advertiser and by competition label) if the
  family had an exposure in ``(t - min_gap, t)``;
* a block if the user (or, by the rule, the household) gave negative feedback of a kind the
  rule names, or converted (a rule naming ``conversion``), on the campaign, advertiser or
  category in ``(t - duration, t)``.

The ads of one pod count toward each other's caps and gaps: a selection's count also holds the
earlier selections of its own request in the same family.

Counting is vectorised: per rule, one sort of the history by (family key, time) and two binary
searches per selection.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from engine.caps.rules import (
    CONVERSION,
    SCOPE_COLUMN,
    TARGET_COLUMN,
    CapsConfig,
    Family,
    competitor_column,
)

US = 1_000_000
DAY_US = 86_400 * US
_VIOLATION_COLUMNS: dict[str, pl.DataType] = {
    "rule": pl.String(),
    "kind": pl.String(),
    "request_id": pl.String(),
    "ad_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "count": pl.Int64(),
    "limit": pl.Int64(),
}
VIOLATION_SCHEMA = pl.Schema(_VIOLATION_COLUMNS)


def violations(
    selections: pl.DataFrame,
    history: pl.DataFrame,
    feedback: pl.DataFrame,
    caps: CapsConfig,
    retention_s: int,
) -> pl.DataFrame:
    """Every selection that broke a rule, one row per (selection, rule).

    Args:
        selections: the engine's picks (``EXPOSURE_COLUMNS`` of ``engine.replay.collect``).
        history: the exposures recorded into the store during the replay (same columns).
        feedback: the negative feedback and conversions recorded (``collect.FEEDBACK_COLUMNS``).
        caps: the rules the engine ran with.
        retention_s: the store's exact-window retention (longer windows count UTC days).
    """
    competitor = competitor_column(caps.competitor_of)  # the separation rules' target
    selections = selections.with_columns(competitor)
    history = history.with_columns(competitor)
    found = []
    for i, rule in enumerate(caps.rules):
        name = rule.name or f"caps.rules[{i}]"
        w = rule.window_s
        mode = "lifetime" if w is None else ("exact" if w <= retention_s else "days")
        found.append(_family_check(selections, history, rule, name, "cap", w, mode, rule.limit))
    for i, gap in enumerate(caps.gap_rules):
        name = gap.name or f"caps.min_gaps[{i}]"
        found.append(
            _family_check(selections, history, gap, name, "gap", gap.min_gap_s, "exact", 1)
        )
    found.append(_blocks(selections, feedback, caps))
    return pl.concat(found, how="vertical")


def _key(family: Family) -> pl.Expr:
    scope = pl.col(SCOPE_COLUMN[family.scope])
    target = TARGET_COLUMN[family.target]
    return scope if target is None else pl.concat_str([scope, pl.col(target)], separator="\x1f")


def _matching(frame: pl.DataFrame, family: Family) -> pl.DataFrame:
    keep = pl.lit(True)
    if family.touchpoint is not None:
        keep &= pl.col("touchpoint").cast(pl.String) == family.touchpoint
    if family.slot is not None:
        keep &= pl.col("slot").cast(pl.String) == family.slot
    return frame.filter(keep).with_columns(_key(family).alias("key")).drop_nulls("key")


def _family_check(
    selections: pl.DataFrame,
    history: pl.DataFrame,
    family: Family,
    name: str,
    kind: str,
    window_s: int | None,
    mode: str,
    limit: int,
) -> pl.DataFrame:
    q = _matching(selections, family)
    h = _matching(history, family)
    qt = q["ts"].dt.epoch("us").to_numpy()
    if mode == "lifetime":
        lo, inclusive = np.full(len(qt), np.iinfo(np.int64).min // 4), True
    elif mode == "days":
        days = -(-int(window_s or 0) // 86_400)
        lo, inclusive = (qt // DAY_US - days + 1) * DAY_US, True
    else:
        lo, inclusive = qt - int(window_s or 0) * US, False
    count = count_before(h["key"], h["ts"].dt.epoch("us").to_numpy(), q["key"], qt, lo, inclusive)
    # the ads of one pod count toward each other's caps (docs/caps.md): each pick also sees
    # the earlier picks of its request with its key
    count += q.select(pl.int_range(pl.len()).over("request_id", "key")).to_series().to_numpy()
    bad = count >= limit
    return q.filter(pl.Series(bad)).select(
        pl.lit(name).alias("rule"),
        pl.lit(kind).alias("kind"),
        "request_id",
        "ad_id",
        "ts",
        pl.Series("count", count[bad], dtype=pl.Int64),
        pl.lit(limit, dtype=pl.Int64).alias("limit"),
    )


def count_before(
    history_key: pl.Series,
    history_t: np.ndarray,
    query_key: pl.Series,
    query_t: np.ndarray,
    lower_t: np.ndarray,
    lower_inclusive: bool,
) -> np.ndarray:
    """Per query, history events with its key and a time in ``[lower, t)`` (inclusive) or
    ``(lower, t)`` (exclusive lower bound)."""
    if len(query_key) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = pl.concat([history_key, query_key]).rank("dense").to_numpy().astype(np.int64)
    hk, qk = keys[: len(history_key)], keys[len(history_key) :]
    times = np.unique(np.concatenate([history_t, query_t, lower_t]))
    m = len(times) + 1
    h = np.sort(hk * m + np.searchsorted(times, history_t))
    upper = np.searchsorted(h, qk * m + np.searchsorted(times, query_t), side="left")
    side: Literal["left", "right"] = "left" if lower_inclusive else "right"
    lower = np.searchsorted(h, qk * m + np.searchsorted(times, lower_t), side=side)
    return np.asarray(upper - lower, dtype=np.int64)


def _blocks(selections: pl.DataFrame, feedback: pl.DataFrame, caps: CapsConfig) -> pl.DataFrame:
    parts = [pl.DataFrame(schema=VIOLATION_SCHEMA)]
    if feedback.is_empty():
        return parts[0]
    for i, rule in enumerate(caps.block_rules):
        kinds = [k for k in rule.on if k != CONVERSION]
        sets = pl.col("negative_kind").cast(pl.String).is_in(kinds).fill_null(False)
        if CONVERSION in rule.on:
            sets = sets | pl.col("converted").fill_null(False)
        setting = feedback.filter(sets)
        for scope in ["user", "household"] if rule.household else ["user"]:
            family = Family.model_validate({"scope": scope, "target": rule.target})
            name = f"block {i} ({'/'.join(rule.on)}: {scope}, {rule.target})"
            check = _family_check(
                selections, setting, family, name, "block", rule.duration_s, "exact", 1
            )
            parts.append(check)
    return pl.concat(parts, how="vertical")
