"""The true probabilities of the synthetic world, as polars expressions over observable columns.

Each term is a function of a column a model can see (or of the ad's latent ``quality``, which a
model learns through the ad's engagement history). Exposure columns come from
``features.exposure``, so fatigue in the truth is measured exactly as the features measure it.
"""

from __future__ import annotations

import math

import polars as pl

from engine.synth.params import TruthParams


def _slot_format(table: dict[str, dict[str, float]]) -> pl.Expr:
    mapping = {f"{s}|{f}": v for s, row in table.items() for f, v in row.items()}
    key = pl.concat_str(
        pl.col("slot").cast(pl.String), pl.lit("|"), pl.col("format").cast(pl.String)
    )
    return key.replace_strict(mapping, default=0.5, return_dtype=pl.Float64)


def intrusiveness(t: TruthParams) -> pl.Expr:
    """True intrusiveness of the row's format on its slot, 0..1."""
    return _slot_format(t.intrusiveness)


def interest_weight(t: TruthParams) -> pl.Expr:
    """Weight of the ad's category by its rank among the user's interest tags (0 if absent)."""
    terms = [
        (pl.col("user_interests").list.get(k, null_on_oob=True) == pl.col("category"))
        .fill_null(False)
        .cast(pl.Float64)
        * w
        for k, w in enumerate(t.interest_rank_weight)
    ]
    return pl.sum_horizontal(terms)


def engage_logit_static(t: TruthParams) -> pl.Expr:
    """Engagement log-odds without fatigue: what a logging policy without history could know."""
    hour = pl.col("local_hour").cast(pl.Float64)
    peak = (
        pl.col("touchpoint")
        .cast(pl.String)
        .replace_strict(t.hour_engage_peak, return_dtype=pl.Float64)
    )
    return (
        t.engage_base
        + pl.col("slot").cast(pl.String).replace_strict(t.slot_engage, return_dtype=pl.Float64)
        + pl.col("format").cast(pl.String).replace_strict(t.format_engage, return_dtype=pl.Float64)
        + t.fit_from_intrusiveness * intrusiveness(t)
        + pl.col("quality")
        + interest_weight(t)
        + t.hour_engage_amplitude * ((hour - peak) * (2 * math.pi / 24)).cos()
    )


def engage_logit(t: TruthParams) -> pl.Expr:
    """True engagement log-odds, including fatigue with the same campaign."""
    return (
        engage_logit_static(t)
        + t.engage_fatigue_user_campaign_24h
        * pl.col("exp_user_campaign_24h").cast(pl.Float64).log1p()
    )


def negative_logit(t: TruthParams) -> pl.Expr:
    """True negative-feedback log-odds: intrusiveness, length, late hours, fatigue, interest."""
    late = pl.col("local_hour").is_in(t.negative_late_hours).cast(pl.Float64)
    interested = (interest_weight(t) > 0).cast(pl.Float64)
    return (
        t.negative_base
        + t.negative_intrusiveness * intrusiveness(t)
        + t.negative_per_30s * pl.col("duration_s") / 30.0
        + t.negative_late * late
        + t.negative_fatigue_user_any_1h * pl.col("exp_user_any_1h").cast(pl.Float64).log1p()
        + t.negative_fatigue_household_any_24h
        * pl.col("exp_household_any_24h").cast(pl.Float64).log1p()
        + t.negative_interest * interested
    )


def sigmoid(x: pl.Expr) -> pl.Expr:
    """Logistic function."""
    return 1.0 / (1.0 + (-x).exp())


def conversion_rate(t: TruthParams) -> pl.Expr:
    """P(converted | engaged) by category."""
    return pl.col("category").replace_strict(
        t.conversion_rate, default=0.05, return_dtype=pl.Float64
    )
