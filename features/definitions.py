"""The registered features of admatch. Import ``FEATURES`` to use them.

Inputs are columns of the ad-opportunity log (``features.schema``) plus the exposure columns
(``features.exposure``); nothing here reads the truth columns of a synthetic log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import polars as pl
import pyarrow.compute as pc

from features.exposure import BUCKET_S, COUNT_COLUMNS, COUNT_DTYPE, SINCE_COLUMNS, SINCE_DTYPE
from features.params import FeatureParams
from features.registry import Feature, FeatureRegistry
from features.schema import FORMATS, RATINGS, SLOTS
from features.taxonomy import Branches, list_lengths

FEATURES = FeatureRegistry()


def _code(_p: FeatureParams, column: str) -> pl.Expr:
    return pl.col(column).to_physical()


def _rate(p: FeatureParams, key: str) -> pl.Expr:
    return p.stats.rate_expr(key)


def _column(_p: FeatureParams, column: str) -> pl.Expr:
    return pl.col(column)


F64 = pl.Float64()
U8 = pl.UInt8()
I8 = pl.Int8()
MAX_INTEREST_RANK = 5

# --- context: categorical codes are the Enum's physical codes (stable: the vocabularies are
# fixed in the schema; a null value stays null and LightGBM treats it as missing).
for _col in (
    "touchpoint",
    "slot",
    "scene",
    "format",
    "pricing",
    "age_band",
    "activity_level",
    "content_rating",
):
    FEATURES.add(
        Feature(
            f"{_col}_code",
            U8,
            f"{_col} as its schema vocabulary code (categorical)",
            partial(_code, column=_col),
            categorical=True,
        )
    )


_HOURS = pl.DataFrame({"local_hour": pl.Series(list(range(-128, 128)), dtype=pl.Int8)})


def _by_hour(of_hour: pl.Expr) -> pl.Expr:
    """``of_hour`` (an expression of ``local_hour``, an Int8) as a lookup: tabulated once by
    polars over every Int8 value, so the values are the expression's own, bit for bit."""
    table = _HOURS.select(of_hour).to_series()
    return pl.lit(table).gather(pl.col("local_hour").cast(pl.Int16) + 128)


@FEATURES.register("hour_sin", F64, "sine of the local hour on the 24 h circle")
def hour_sin(_p: FeatureParams) -> pl.Expr:
    return _by_hour((pl.col("local_hour").cast(F64) * (2 * math.pi / 24)).sin())


@FEATURES.register("hour_cos", F64, "cosine of the local hour on the 24 h circle")
def hour_cos(_p: FeatureParams) -> pl.Expr:
    return _by_hour((pl.col("local_hour").cast(F64) * (2 * math.pi / 24)).cos())


@FEATURES.register(
    "suitability_gap",
    I8,
    "ad suitability tier minus the context rating (family scenes count as at most 'general'); "
    "> 0 means the ad is rated above its context",
)
def suitability_gap(_p: FeatureParams) -> pl.Expr:
    general = RATINGS.index("general")
    rating = pl.col("content_rating").to_physical().cast(I8)
    effective = pl.when(pl.col("scene") == "family").then(rating.clip(upper_bound=general))
    return pl.col("suitability_tier").to_physical().cast(I8) - effective.otherwise(rating)


# --- the ad
@FEATURES.register("ad_duration_s", F64, "play or display length of the ad, seconds")
def ad_duration_s(_p: FeatureParams) -> pl.Expr:
    return pl.col("duration_s")


@FEATURES.register("bid_amount", F64, "bid in money per pricing unit (per mille for cpm)")
def bid_amount(_p: FeatureParams) -> pl.Expr:
    return pl.col("bid")


@FEATURES.register(
    "expected_value",
    F64,
    "bid as money per impression: cpm bid/1000, cpc bid x ctr_ad, cpa bid x ctr_ad x conv prior",
)
def expected_value(p: FeatureParams) -> pl.Expr:
    pricing, bid = pl.col("pricing"), pl.col("bid")
    # cpc: bid x ctr; cpa (and unknown pricing): (bid x ctr) x prior. One ctr lookup for both:
    # multiplying by 1.0 leaves a float as it is.
    per_click = pl.when(pricing == "cpc").then(1.0).otherwise(p.priors.conversion_prior)
    # per mille as a product: polars divides by a literal exactly in one kernel and through
    # its reciprocal in another (which one depends on the frame and the polars release), so a
    # request alone and in a batch could differ in the last bit; a product is one rounding
    return (
        pl.when(pricing == "cpm")
        .then(bid * 0.001)
        .otherwise(bid * p.stats.rate_expr("ad") * per_click)
    )


@FEATURES.register(
    "intrusiveness_prior", F64, "prior intrusiveness of the ad's format on the slot, 0..1"
)
def intrusiveness_prior(p: FeatureParams) -> pl.Expr:
    flat = pl.Series([p.priors.intrusiveness[s][f] for s in SLOTS for f in FORMATS], dtype=F64)
    code = pl.col("slot").to_physical().cast(pl.UInt32) * len(FORMATS) + pl.col(
        "format"
    ).to_physical().cast(pl.UInt32)
    return pl.lit(flat).gather(code)


# --- the user and the ad
@FEATURES.register(
    "interest_affinity",
    F64,
    f"user-interest x ad-category affinity: 1/rank of the first of the user's top "
    f"{MAX_INTEREST_RANK} interest tags that is the ad's category (or, with a taxonomy in the "
    "priors, the category or one above it, by id or name), 0 when none is",
)
def interest_affinity(p: FeatureParams) -> pl.Expr:
    if p.priors.taxonomy is not None:
        return pl.map_batches(
            ["user_interests", "category"],
            partial(_affinity_through, branches=Branches.of(p.priors.taxonomy)),
            return_dtype=F64,
            is_elementwise=True,
        )
    tags, category = pl.col("user_interests"), pl.col("category")
    chain: Any = pl.when(tags.list.get(0, null_on_oob=True) == category).then(1.0)
    for k in range(1, MAX_INTEREST_RANK):
        chain = chain.when(tags.list.get(k, null_on_oob=True) == category).then(1.0 / (k + 1))
    return chain.otherwise(0.0)


def _affinity_through(columns: Sequence[pl.Series], branches: Branches) -> pl.Series:
    """``interest_affinity`` with a taxonomy: a tag matches the ad's category when it names it
    or a category above it (any case); a tag the taxonomy does not know matches exactly, as
    without one. Each distinct value is looked up once; numpy compares numbers over a
    (rows, ranks) matrix."""
    tags, category = (c.to_arrow() for c in columns)
    n = len(category)
    flat = pc.list_flatten(tags)
    if len(flat) == 0:
        return pl.Series(np.zeros(n), dtype=F64)
    (cat, tag), first, last = branches.code(category, flat)
    lengths = list_lengths(tags)
    rank = np.arange(MAX_INTEREST_RANK)
    at = (np.cumsum(lengths) - lengths)[:, None] + rank
    t = np.where(rank < lengths[:, None], tag[np.minimum(at, len(tag) - 1)], -1)
    number = first[cat][:, None]
    inside = (number >= first[t]) & (number <= last[t]) & (number >= 0)
    hit = np.where(first[t] >= 0, inside, (t == cat[:, None]) & (t >= 0))
    best = hit.argmax(axis=1)
    return pl.Series(np.where(hit.any(axis=1), 1.0 / (best + 1), 0.0), dtype=F64)


# --- fitted engagement history
for _key, _doc in (
    ("ad", "the ad"),
    ("campaign", "the campaign"),
    ("advertiser", "the advertiser"),
    ("category_slot", "the ad's category on this slot (and so touchpoint)"),
):
    FEATURES.add(
        Feature(
            f"ctr_{_key}",
            F64,
            f"smoothed historical engagement rate of {_doc} (fitted offline)",
            partial(_rate, key=_key),
        )
    )


@FEATURES.register("log_impressions_ad", F64, "log(1 + impressions of the ad in fitting)")
def log_impressions_ad(p: FeatureParams) -> pl.Expr:
    return p.stats.impressions_expr("ad").log1p()


# --- exposures (point-in-time offline, handed in online)
for _col in COUNT_COLUMNS:
    _, _scope, _target, _window = _col.split("_")
    _bucket = {3_600: "UTC hours", 86_400: "UTC days"}.get(BUCKET_S[_window], "")
    FEATURES.add(
        Feature(
            _col,
            COUNT_DTYPE,
            f"exposures of this {_scope} to {'any ad' if _target == 'any' else 'the ' + _target}"
            f" in the last {_window}" + (f" (by {_bucket})" if _bucket else ""),
            partial(_column, column=_col),
            passthrough=True,
            definition=f"{_window} by {_bucket}" if _bucket else "",
        )
    )
for _col in SINCE_COLUMNS:
    FEATURES.add(
        Feature(
            _col,
            SINCE_DTYPE,
            f"seconds since this {_col.split('_')[1]}'s last exposure to the campaign in the "
            "24h window; null if none there",
            partial(_column, column=_col),
            passthrough=True,
        )
    )
