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
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import COST_COMPONENTS, AdmatchConfig
from engine.scoring.types import attribute_mask
from features.exposure import EXPOSURE_SCHEMA, WINDOWS_S, count_column, since_column
from features.schema import (
    AGE_BANDS,
    ASSISTANT_STATES,
    AUDIENCES,
    FORMATS,
    PRICING,
    RATINGS,
    SCENES,
    SLOTS,
    TOUCHPOINTS,
)
from features.taxonomy import Branches

T = TypeVar("T")
_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}
GENERAL = RATINGS.index("general")
MATURE = RATINGS.index("mature")
FAMILY = SCENES.index("family")
KIDS = RATINGS.index("kids")
UNDER_18 = AGE_BANDS.index("under_18")
ADULTS_ONLY = AUDIENCES.index("adults_only")
CHILD = AUDIENCES.index("child_present")
# the input columns Rows reads (built beside the features' inputs: FeatureCore.batch(also=))
INPUTS = (
    "touchpoint",
    "slot",
    "scene",
    "content_rating",
    "suitability_tier",
    "format",
    "pricing",
    "local_hour",
    "duration_s",
    "bid",
    "age_band",
    "category",
    "audience",
    "assistant_state",
    "advertiser_id",
    "advertiser_domain",
    "blocked_categories",
    "blocked_advertisers",
    "blocked_attributes",
    "creative_attributes",
    "content_categories",
    "excluded_content",
)
CPM = PRICING.index("cpm")
CPC = PRICING.index("cpc")
CPA = PRICING.index("cpa")


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
    age: np.ndarray  # age band code, -1 unknown
    category: pa.Array  # the ad's category (strings, nulls)
    audience: np.ndarray  # who is present (AUDIENCES code), -1 unknown
    state: np.ndarray  # the voice assistant's state (ASSISTANT_STATES code), -1 unknown
    request_blocks_category: np.ndarray  # bool: the row's request blocks its category
    request_blocks_advertiser: np.ndarray  # bool: the row's request blocks its advertiser
    attributes: np.ndarray  # the creative's attributes (bitmask, 0 unknown)
    blocked_attributes: np.ndarray  # the attributes the row's request blocks (bitmask, 0 none)
    content_excluded: np.ndarray  # bool: its campaign excludes a category of the content

    @classmethod
    def from_inputs(cls, inputs: pl.DataFrame, rules: CompiledRules | None = None) -> Rows:
        """Extract the arrays from the feature core's input rows (``rules``: the taxonomies'
        branches, so that a request blocking a category blocks its whole branch, and a campaign
        excluding a content category excludes its whole branch)."""
        hour = inputs.get_column("local_hour")
        return cls(
            touchpoint=_codes(inputs.get_column("touchpoint"), 0),
            slot=_codes(inputs.get_column("slot"), 0),
            scene=_codes(inputs.get_column("scene"), -1),
            rating=_codes(inputs.get_column("content_rating"), GENERAL),
            tier=_codes(inputs.get_column("suitability_tier"), GENERAL),
            format=_codes(inputs.get_column("format"), 0),
            pricing=_codes(inputs.get_column("pricing"), 0),
            hour=_integers(hour.to_numpy(), hour.null_count(), -1),
            duration_s=_floats(inputs.get_column("duration_s"), 0.0),
            bid=inputs.get_column("bid").to_numpy(),
            age=_codes(inputs.get_column("age_band"), -1),
            category=inputs.get_column("category").to_arrow(),
            audience=_codes(inputs.get_column("audience"), -1),
            state=_codes(inputs.get_column("assistant_state"), -1),
            request_blocks_category=_listed(
                inputs, "blocked_categories", "category", rules.branches if rules else None
            ),
            request_blocks_advertiser=_listed(inputs, "blocked_advertisers", "advertiser_id")
            | _domain_listed(inputs, "blocked_advertisers", "advertiser_domain"),
            attributes=_mask(inputs, "creative_attributes"),
            blocked_attributes=_mask(inputs, "blocked_attributes"),
            content_excluded=_overlap(
                inputs, "content_categories", "excluded_content", rules.content if rules else None
            ),
        )


# Series.to_physical and Series.fill_null run polars' expression engine (~40-80 us a call);
# Arrow and numpy read the same values in a few microseconds.


def _listed(
    inputs: pl.DataFrame, lists: str, value: str, branches: Branches | None = None
) -> np.ndarray:
    """Per row, whether its ``value`` is in its ``lists`` entry (one polars pass, and none when
    no row has a list entry: the common case). With a taxonomy's ``branches``, a value also
    counts as listed when it is under a listed category: the entry names a whole branch."""
    entries = inputs.get_column(lists).to_arrow()
    if len(entries.flatten()) == 0:
        return np.zeros(len(inputs), dtype=bool)
    if branches is None:
        found = inputs.select(pl.col(lists).list.contains(pl.col(value)).fill_null(False))
        return found.to_series().to_numpy()
    own = inputs.get_column(value).cast(pl.String).to_arrow()
    one_each = pa.ListArray.from_arrays(pa.array(np.arange(len(own) + 1, dtype=np.int32)), own)
    return branches.covered(one_each, entries)


DOMAIN_LABELS = 5  # the suffixes of a domain tried: a.b.c.d.e, b.c.d.e, c.d.e, d.e, e


def _domain_listed(inputs: pl.DataFrame, lists: str, domain: str) -> np.ndarray:
    """Per row, whether its ``domain`` or a domain above it (``ford.com`` above
    ``www.ford.com``) is in its ``lists`` entry, in any case (one polars pass, none when no
    row has both a list entry and a domain; the domains first: most requests send none)."""
    if inputs.get_column(domain).null_count() == len(inputs):
        return np.zeros(len(inputs), dtype=bool)
    if len(inputs.get_column(lists).to_arrow().flatten()) == 0:
        return np.zeros(len(inputs), dtype=bool)
    entries = pl.col(lists).list.eval(pl.element().str.to_lowercase())
    suffix = pl.col(domain).str.to_lowercase().str.strip_chars(".")
    found = entries.list.contains(suffix)
    for _ in range(DOMAIN_LABELS - 1):
        suffix = pl.when(suffix.str.contains(".", literal=True)).then(
            suffix.str.replace(r"^[^.]*\.", "")
        )
        found = found | entries.list.contains(suffix)
    return inputs.select(found.fill_null(False)).to_series().to_numpy()


def _overlap(
    inputs: pl.DataFrame, values: str, entries: str, branches: Branches | None = None
) -> np.ndarray:
    """Per row, whether one of its ``values`` is one of its ``entries`` (both list columns; one
    pass, none when either column holds no value at all: the common case). With a taxonomy's
    ``branches``, a value under one of the entries counts too."""
    arrays = [inputs.get_column(c).to_arrow() for c in (values, entries)]
    if any(len(a.flatten()) == 0 for a in arrays):
        return np.zeros(len(inputs), dtype=bool)
    if branches is not None:
        return branches.covered(*arrays)
    shared = pl.col(values).list.set_intersection(pl.col(entries)).list.len().fill_null(0) > 0
    return inputs.select(shared).to_series().to_numpy()


def _mask(inputs: pl.DataFrame, column: str) -> np.ndarray:
    """A bitmask column as numpy, nulls as 0 (none)."""
    out: np.ndarray = pc.fill_null(inputs.get_column(column).to_arrow(), 0).to_numpy()
    return out


def _codes(enum: pl.Series, null: int) -> np.ndarray:
    """An Enum column's vocabulary indices as int64, ``null`` where missing.

    An Enum exports to Arrow as a dictionary array over all its categories, in order, so the
    dictionary indices are the physical codes (pinned by a test).
    """
    indices = enum.to_arrow().indices
    return _integers(indices.to_numpy(zero_copy_only=False), indices.null_count, null)


def _integers(values: np.ndarray, nulls: int, null: int) -> np.ndarray:
    """Integers as int64; with ``nulls``, ``values`` is float with NaN where one is missing."""
    return (np.where(np.isnan(values), null, values) if nulls else values).astype(np.int64)


def _floats(column: pl.Series, null: float) -> np.ndarray:
    """A float column as float64, ``null`` where missing (a NaN value stays NaN)."""
    if not column.null_count():
        return column.to_numpy()
    return pc.fill_null(column.to_arrow(), null).to_numpy()


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
    restricted: pa.Array  # protections.restricted_categories
    shared: np.ndarray  # (touchpoints,) bool: a shared screen whose audience is unknown
    # (slots, states + 1), the last column for an unknown state: whether the slot takes ads,
    # and how long an ad may be, in that state
    state_ok: np.ndarray
    state_max_duration: np.ndarray
    # protections.blocked_categories: (the Rows field it matches, its code, the categories)
    place_blocks: list[tuple[str, int, pa.Array]]
    # protections.blocked_attributes: (the Rows field it matches, its code, the bitmask)
    place_attributes: list[tuple[str, int, int]]
    # protections.taxonomy and content_taxonomy as branches (None: not configured)
    branches: Branches | None
    content: Branches | None

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
        p = config.protections
        restricted = pa.array(p.restricted(), type=pa.string())
        shared = np.array(
            [p.unknown_audience_on_shared_screens and t in p.shared_screens for t in TOUCHPOINTS]
        )
        state_ok = np.ones((len(SLOTS), len(ASSISTANT_STATES) + 1), dtype=bool)
        state_dur = np.repeat(max_dur[:, None].astype(np.float64), len(ASSISTANT_STATES) + 1, 1)
        for i, s in enumerate(SLOTS):
            rule = config.slots[s]
            for j, state in enumerate(ASSISTANT_STATES):
                state_ok[i, j] = rule.assistant_states is None or state in rule.assistant_states
                state_dur[i, j] = min(max_dur[i], rule.max_duration_by_state.get(state, np.inf))
        return cls(
            intr,
            allowed,
            max_dur,
            quiet,
            weights,
            caps,
            gaps,
            config,
            restricted,
            shared,
            state_ok,
            state_dur,
            _place_blocks(p.place_blocks()),
            [
                (field, code, attribute_mask(numbers, "protections.blocked_attributes"))
                for field, code, numbers in _places(p.blocked_attributes)
            ],
            p.branches(),
            p.content_branches(),
        )


def _places(blocks: dict[str, list[T]]) -> list[tuple[str, int, list[T]]]:
    """Config entries keyed by touchpoint, slot or scene: (the Rows field, its code, value)."""
    out = []
    for key, values in blocks.items():
        field, names = next(
            (f, n)
            for f, n in (("touchpoint", TOUCHPOINTS), ("slot", SLOTS), ("scene", SCENES))
            if key in n
        )
        out.append((field, names.index(key), values))
    return out


def _place_blocks(blocks: dict[str, list[str]]) -> list[tuple[str, int, pa.Array]]:
    """Config category blocks keyed by touchpoint, slot or scene, as Rows codes."""
    return [(f, code, pa.array(c, type=pa.string())) for f, code, c in _places(blocks)]


def exposure_rules(
    config: AdmatchConfig,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The cap and gap rules the exposure columns express: no touchpoint or slot filter, a
    feature target (campaign, advertiser, any) and a feature window (1h; 24h and 7d); gaps on
    the campaign. Used when a request carries exposures but no cap decision from a store. The
    24h and 7d columns go by UTC hours and days (``features.exposure.BUCKET_S``): they count no
    more than the rolling window, so a cap they reach does hold, but one the rolling window
    reaches only with the part of the oldest hour (day) they leave out is not caught."""
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


def expected_value(
    rows: Rows,
    p_engage: np.ndarray,
    conversion_prior: float,
    p_convert: np.ndarray | None = None,
) -> np.ndarray:
    """Money per impression: cpm bid/1000, cpc bid x P(engage), cpa bid x P(engage) x
    P(convert | engage) (the conversion model's, else ``conversion_prior``)."""
    convert = conversion_prior if p_convert is None else p_convert
    per_unit = np.where(
        rows.pricing == CPM,
        1e-3,
        np.where(rows.pricing == CPC, p_engage, p_engage * convert),
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
    counts = _finite(exposures[:, _FATIGUE_COLUMNS])
    fatigue = np.log1p(counts[:, 0]) + np.log1p(counts[:, 1]) + 0.5 * np.log1p(counts[:, 2])
    hour_ok = rows.hour >= 0
    quiet = rules.quiet[rows.touchpoint, np.where(hour_ok, rows.hour, 0)] & hour_ok
    family = np.where(rows.scene == FAMILY, np.maximum(rows.tier - GENERAL, 0), 0)
    parts = (  # in COST_COMPONENTS order
        rules.intrusiveness[rows.slot, rows.format],
        rows.duration_s / 30.0,
        p_negative,
        np.maximum(0.0, 1.0 - p_engage / s.relevance_reference),
        fatigue,
        quiet,
        family,
    )
    assert len(parts) == len(COST_COMPONENTS)
    out = np.empty((len(rows.bid), len(parts)))
    for j, part in enumerate(parts):  # a loop over the components
        out[:, j] = part
    return out


_FATIGUE_COLUMNS = [
    _EXPOSURE_INDEX[count_column(*key)]
    for key in (("user", "any", "1h"), ("user", "campaign", "24h"), ("household", "any", "24h"))
]


def _finite(counts: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(counts, nan=0.0)``, skipped (it costs ~10 us) when all are finite."""
    return counts if np.isfinite(counts).all() else np.nan_to_num(counts, nan=0.0)


def format_not_allowed(rules: CompiledRules, rows: Rows) -> np.ndarray:
    """The slot does not take the format, or the ad is longer than the slot allows (in the
    voice assistant's state, where the slot sets a shorter limit for it)."""
    return ~rules.allowed[rows.slot, rows.format] | (
        rows.duration_s > rules.state_max_duration[rows.slot, rows.state]
    )


def assistant_busy(rules: CompiledRules, rows: Rows) -> np.ndarray:
    """A voice slot in an assistant state that takes no ads (an unknown state is taken)."""
    return ~rules.state_ok[rows.slot, rows.state]


def protections(rules: CompiledRules, rows: Rows) -> list[tuple[np.ndarray, str]]:
    """Per protection (docs/scoring.md), the rows it refuses, with the name of its reason, in
    the order they are checked: an ad of a restricted category never reaches a user under 18,
    a place where a child may be present (a family scene, content rated for kids, an audience
    with a child), or a shared screen whose audience is not known to be adults only. Any sign
    of a child wins: ``adults_only`` lifts only the shared-screen rule."""
    restricted = _among(rows.category, rules.restricted)
    child = (rows.scene == FAMILY) | (rows.rating == KIDS) | (rows.audience == CHILD)
    unknown = rules.shared[rows.touchpoint] & (rows.audience != ADULTS_ONLY)
    return [
        (restricted & (rows.age == UNDER_18), "AGE_RESTRICTED"),
        (restricted & child, "CHILD_PRESENT"),
        (restricted & unknown, "AUDIENCE_UNKNOWN"),
    ]


def _among(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Per row, whether its value (not null) is one of ``value_set`` (Arrow, no Python loop)."""
    found = pc.fill_null(pc.is_in(values, value_set=value_set), False)
    out: np.ndarray = found.to_numpy(zero_copy_only=False)
    return out


def blocked(rules: CompiledRules, rows: Rows) -> list[tuple[np.ndarray, str]]:
    """The rows a block list refuses, with the name of its reason: the request's categories,
    advertisers and creative attributes (OpenRTB bcat / badv / battr), the config's categories
    per touchpoint, slot or scene, and the campaign's content exclusions."""
    category = rows.request_blocks_category.copy()
    for field, code, categories in rules.place_blocks:  # a loop over the config's entries
        category |= _among(rows.category, categories) & (getattr(rows, field) == code)
    attribute = (rows.attributes & rows.blocked_attributes) != 0
    for field, code, mask in rules.place_attributes:  # a loop over the config's entries
        attribute |= ((rows.attributes & mask) != 0) & (getattr(rows, field) == code)
    return [
        (category, "BLOCKED_CATEGORY"),
        (rows.request_blocks_advertiser, "BLOCKED_ADVERTISER"),
        (attribute, "BLOCKED_ATTRIBUTE"),
        (rows.content_excluded, "CONTENT_EXCLUDED"),
    ]


def protected(rules: CompiledRules, rows: Rows) -> np.ndarray:
    """The rows some protection or block list refuses."""
    out = np.zeros(len(rows.bid), dtype=bool)
    for refused, _ in [*protections(rules, rows), *blocked(rules, rows)]:
        out |= refused
    return out


def brand_unsuitable(rows: Rows) -> np.ndarray:
    """The ad's tier is above the context rating, or a mature ad would reach a family scene."""
    return (rows.tier > rows.rating) | ((rows.scene == FAMILY) & (rows.tier >= MATURE))


def frequency_capped(rules: CompiledRules, exposures: np.ndarray) -> np.ndarray:
    """From exposure counts alone: an expressible cap at its limit or a campaign gap too short."""
    capped = np.zeros(len(exposures), dtype=bool)
    if rules.caps:
        columns, limits = zip(*rules.caps, strict=True)
        counts = _finite(exposures[:, list(columns)])
        capped |= (counts >= np.array(limits)).any(axis=1)
    if rules.gaps:
        columns, gaps = zip(*rules.gaps, strict=True)
        with np.errstate(invalid="ignore"):  # NaN: never exposed, not capped
            capped |= (exposures[:, list(columns)] < np.array(gaps)).any(axis=1)
    return capped
