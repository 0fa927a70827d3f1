"""A readable summary of an ad-opportunity log (what ``admatch summary`` prints)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class LogSummary:
    """Headline numbers and per-slot rates of a log."""

    rows: int
    requests: int
    impressions: int
    users: int
    households: int
    start: str
    end: str
    by_slot: pl.DataFrame


def summarize(log: pl.LazyFrame | pl.DataFrame) -> LogSummary:
    """Summarize a conformed log: sizes, time span, and per-slot traffic and outcome rates."""
    lf = log.lazy()
    head = (
        lf.select(
            pl.len().alias("rows"),
            pl.col("request_id").n_unique().alias("requests"),
            pl.col("shown").sum().alias("impressions"),
            pl.col("user_id").n_unique().alias("users"),
            pl.col("household_id").drop_nulls().n_unique().alias("households"),
            pl.col("ts").min().alias("start"),
            pl.col("ts").max().alias("end"),
        )
        .collect()
        .row(0, named=True)
    )
    shown = pl.col("shown")
    by_slot = (
        lf.group_by("touchpoint", "slot")
        .agg(
            pl.col("request_id").n_unique().alias("requests"),
            pl.len().alias("candidates"),
            shown.sum().alias("impressions"),
            pl.col("engaged").filter(shown).mean().alias("engaged_rate"),
            pl.col("negative").filter(shown).mean().alias("negative_rate"),
            pl.col("true_p_engaged").filter(shown).mean().alias("true_p_engaged"),
            pl.col("true_p_negative").filter(shown).mean().alias("true_p_negative"),
        )
        .sort("touchpoint", "slot")
        .collect()
    )
    return LogSummary(
        rows=head["rows"],
        requests=head["requests"],
        impressions=int(head["impressions"] or 0),
        users=head["users"],
        households=head["households"],
        start=str(head["start"]),
        end=str(head["end"]),
        by_slot=by_slot,
    )
