"""Pure, vectorised scoring rules: expected value, experience cost, eligibility.

Every function takes numpy arrays over the candidate rows of one or many requests and returns
arrays of the same length. Nothing here does I/O or loops over candidates.

Experience-cost components (unitless, before weights), per candidate:

* ``intrusiveness``: the config's slot x format table, 0..1.
* ``length``: play or display length in units of 30 s (unknown length: 0).
* ``negative_feedback``: the model's P(negative) (0 when the model has no negative target).
* ``relevance_mismatch``: ``max(0, 1 - P(engage) / relevance_reference)``.
* ``fatigue``: ``log1p(user's exposures to any ad in 1 h) + log1p(user's exposures to the
  campaign in 24 h) + 0.5 log1p(household's exposures to any ad in 24 h)``.
* ``quiet_hours``: 1 when the local hour is in the touchpoint's quiet hours, else 0.
* ``family_scene``: in a family scene, how far the ad's tier is above ``general`` (a teen-tier
  ad: 1); mature ads are never eligible there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.config import COST_COMPONENTS, AdmatchConfig
from features.exposure import EXPOSURE_SCHEMA, WINDOWS_S, count_column, since_column
from features.schema import FORMATS, PRICING, RATINGS, SCENES, SLOTS, TOUCHPOINTS

_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}
GENERAL = RATINGS.index("general")
MATURE = RATINGS.index("mature")
FAMILY = SCENES.index("family")


@dataclass(frozen=True)
class Rows:
    """The raw values the rules read, one entry per candidate row (codes are vocabulary
    indices of the schema's enums; unknown rating and tier count as ``general``)."""

    touchpoint: np.ndarray
    slot: np.ndarray
    scene: np.ndarray
    rating: np.ndarray
    tier: np.ndarray
    format: np.ndarray
    pricing: np.ndarray
    hour: np.ndarray
    duration_s: np.ndarray
    bid: np.ndarray

    @classmethod
    def from_inputs(cls, inputs: pl.DataFrame) -> Rows:
        """Extract the arrays from the feature core's input rows."""

        def code(name: str, default: int) -> np.ndarray:
            return inputs[name].to_physical().fill_null(default).to_numpy().astype(np.int64)

        return cls(
            touchpoint=code("touchpoint", 0),
            slot=code("slot", 0),
            scene=code("scene", -1),
            rating=code("content_rating", GENERAL),
            tier=code("suitability_tier", GENERAL),
            format=code("format", 0),
            pricing=code("pricing", 0),
            hour=inputs["local_hour"].fill_null(-1).to_numpy().astype(np.int64),
            duration_s=inputs["duration_s"].fill_null(0.0).to_numpy(),
            bid=inputs["bid"].to_numpy(),
        )


@dataclass(frozen=True)
class CompiledRules:
    """The config turned into lookup arrays, built once per config."""

    intrusiveness: np.ndarray  # (slots, formats)
    allowed: np.ndarray  # (slots, formats) bool
    max_duration: np.ndarray  # (slots,)
    quiet: np.ndarray  # (touchpoints, 24) bool
    weights: np.ndarray  # (components,)
    caps: list[tuple[int, float]]  # exposure column, limit (rules the exposures express)
    gaps: list[tuple[int, float]]  # recency column, minimum gap in seconds
    config: AdmatchConfig

    @classmethod
    def build(cls, config: AdmatchConfig) -> CompiledRules:
        """Compile a validated config."""
        intr = np.array([[config.intrusiveness[s][f] for f in FORMATS] for s in SLOTS])
        allowed = np.array([[f in config.slots[s].formats for f in FORMATS] for s in SLOTS])
        max_dur = np.array([config.slots[s].max_duration_s for s in SLOTS])
        quiet = np.zeros((len(TOUCHPOINTS), 24), dtype=bool)
        for tp, (start, end) in config.scoring.quiet_hours.items():
            hours = np.arange(24)
            inside = (
                (hours >= start) & (hours < end)
                if start <= end
                else (hours >= start) | (hours < end)
            )
            quiet[TOUCHPOINTS.index(tp)] = inside
        caps, gaps = exposure_rules(config)
        weights = np.array(config.scoring.weights.vector())
        return cls(intr, allowed, max_dur, quiet, weights, caps, gaps, config)


def exposure_rules(
    config: AdmatchConfig,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The cap and gap rules the exposure columns express exactly: no touchpoint or slot
    filter, a feature target (campaign, advertiser, any) and window (1h, 24h, 7d); gaps on the
    campaign. Used when a request carries exposures but no cap decision from a store."""
    windows = {seconds: name for name, seconds in WINDOWS_S.items()}
    caps = [
        (_EXPOSURE_INDEX[count_column(r.scope, r.target, windows[r.window_s])], float(r.limit))
        for r in config.caps.rules
        if r.touchpoint is None
        and r.slot is None
        and r.target in ("campaign", "advertiser", "any")
        and r.window_s in windows
    ]
    gaps = [
        (_EXPOSURE_INDEX[since_column(g.scope)], float(g.min_gap_s))
        for g in config.caps.min_gaps
        if g.touchpoint is None and g.slot is None and g.target == "campaign"
    ]
    return caps, gaps


def expected_value(rows: Rows, p_engage: np.ndarray, conversion_prior: float) -> np.ndarray:
    """Money per impression: cpm bid/1000, cpc bid x P(engage), cpa bid x P(engage) x prior."""
    per_unit = np.select(
        [rows.pricing == PRICING.index("cpm"), rows.pricing == PRICING.index("cpc")],
        [np.full(len(rows.bid), 1e-3), p_engage],
        default=p_engage * conversion_prior,
    )
    return rows.bid * per_unit


def cost_components(
    rules: CompiledRules,
    rows: Rows,
    p_engage: np.ndarray,
    p_negative: np.ndarray,
    exposures: np.ndarray,
) -> np.ndarray:
    """Unweighted components, shape (rows, len(COST_COMPONENTS)), in that order."""
    s = rules.config.scoring
    exp = np.nan_to_num(exposures, nan=0.0)

    def count(scope: str, target: str, window: str) -> np.ndarray:
        return exp[:, _EXPOSURE_INDEX[count_column(scope, target, window)]]

    fatigue = (
        np.log1p(count("user", "any", "1h"))
        + np.log1p(count("user", "campaign", "24h"))
        + 0.5 * np.log1p(count("household", "any", "24h"))
    )
    hour_ok = rows.hour >= 0
    quiet = np.zeros(len(rows.hour))
    quiet[hour_ok] = rules.quiet[rows.touchpoint[hour_ok], rows.hour[hour_ok]]
    family = np.where(rows.scene == FAMILY, np.maximum(rows.tier - GENERAL, 0), 0)
    out = np.column_stack(
        [
            rules.intrusiveness[rows.slot, rows.format],
            rows.duration_s / 30.0,
            p_negative,
            np.maximum(0.0, 1.0 - p_engage / s.relevance_reference),
            fatigue,
            quiet,
            family.astype(np.float64),
        ]
    )
    assert out.shape[1] == len(COST_COMPONENTS)
    return out


def format_not_allowed(rules: CompiledRules, rows: Rows) -> np.ndarray:
    """The slot does not take the format, or the ad is longer than the slot allows."""
    return ~rules.allowed[rows.slot, rows.format] | (
        rows.duration_s > rules.max_duration[rows.slot]
    )


def brand_unsuitable(rows: Rows) -> np.ndarray:
    """The ad's tier is above the context rating, or a mature ad would reach a family scene."""
    return (rows.tier > rows.rating) | ((rows.scene == FAMILY) & (rows.tier >= MATURE))


def frequency_capped(rules: CompiledRules, exposures: np.ndarray) -> np.ndarray:
    """From exposure counts alone: an expressible cap at its limit or a campaign gap too short."""
    capped = np.zeros(len(exposures), dtype=bool)
    counts = np.nan_to_num(exposures, nan=0.0)
    for col, limit in rules.caps:
        capped |= counts[:, col] >= limit
    with np.errstate(invalid="ignore"):
        for col, gap in rules.gaps:
            capped |= exposures[:, col] < gap
    return capped
