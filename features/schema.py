"""The ad-opportunity log: one row per (request, candidate ad).

This module is the schema in code; ``docs/log-schema.md`` is the same schema in prose and a test
keeps the two in step. Vocabularies (touchpoints, slots, formats, ...) are polars ``Enum`` types,
so a value outside the vocabulary is caught when a log is read, not deep inside a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import polars as pl

TOUCHPOINTS = ("ai_voice", "ott", "iot", "mobile")
SLOTS = (
    "voice_reply",
    "voice_break",
    "ott_boot",
    "ott_home_banner",
    "ott_pause",
    "ott_screensaver",
    "ott_preroll",
    "iot_idle_screen",
    "iot_notification",
    "mobile_feed",
    "mobile_splash",
)
SLOT_TOUCHPOINT: dict[str, str] = {
    "voice_reply": "ai_voice",
    "voice_break": "ai_voice",
    "ott_boot": "ott",
    "ott_home_banner": "ott",
    "ott_pause": "ott",
    "ott_screensaver": "ott",
    "ott_preroll": "ott",
    "iot_idle_screen": "iot",
    "iot_notification": "iot",
    "mobile_feed": "mobile",
    "mobile_splash": "mobile",
}
SCENES = ("personal", "family", "life")
FORMATS = ("video", "image", "audio", "text", "interactive")
PRICING = ("cpm", "cpc", "cpa")
# Content ratings of the context and suitability tiers of ads share one ordered scale: an ad of
# tier T fits a context rated R when rank(T) <= rank(R).
RATINGS = ("kids", "general", "teen", "mature")
AGE_BANDS = ("under_18", "18_24", "25_34", "35_44", "45_54", "55_64", "65_plus")
ACTIVITY_LEVELS = ("low", "medium", "high")
NEGATIVE_KINDS = ("skip", "close", "dislike", "hide", "complaint")
AUDIENCES = ("adults_only", "child_present")  # who is in front of the screen; null: unknown
ASSISTANT_STATES = ("idle", "in_dialogue", "task_running", "task_completed")  # voice assistant

TOUCHPOINT = pl.Enum(TOUCHPOINTS)
SLOT = pl.Enum(SLOTS)
SCENE = pl.Enum(SCENES)
FORMAT = pl.Enum(FORMATS)
PRICING_MODEL = pl.Enum(PRICING)
RATING = pl.Enum(RATINGS)
AGE_BAND = pl.Enum(AGE_BANDS)
ACTIVITY_LEVEL = pl.Enum(ACTIVITY_LEVELS)
NEGATIVE_KIND = pl.Enum(NEGATIVE_KINDS)
AUDIENCE = pl.Enum(AUDIENCES)
ASSISTANT_STATE = pl.Enum(ASSISTANT_STATES)
TIMESTAMP = pl.Datetime("us", "UTC")

Group = Literal["request", "candidate", "logging", "outcome", "truth"]


@dataclass(frozen=True)
class Column:
    """One column of the log.

    Attributes:
        name: column name.
        dtype: polars dtype after reading (inputs are coerced to it when lossless).
        group: which part of the row it describes.
        required: a log without it is rejected; optional columns absent from a file are nulls.
        nullable: whether a null value is allowed in a present column.
        unit: unit or value set, for the docs.
        doc: one line of meaning.
        low: smallest allowed value (numeric columns), inclusive.
        high: largest allowed value (numeric columns), inclusive.
    """

    name: str
    dtype: pl.DataType
    group: Group
    required: bool
    nullable: bool
    unit: str
    doc: str
    low: float | None = None
    high: float | None = None

    @property
    def range_text(self) -> str:
        """The allowed range in words, e.g. ``[0, 1]``."""
        return f"[{self.low}, {self.high}]"

    def out_of_range(self, value: pl.Expr) -> pl.Expr:
        """True where ``value`` breaks this column's range or is NaN; false for nulls."""
        bad = value.is_nan() if self.dtype.is_float() else pl.lit(False)
        if self.low is not None:
            bad = bad | (value < self.low)
        if self.high is not None:
            bad = bad | (value > self.high)
        return bad.fill_null(False)


def _c(
    name: str,
    dtype: pl.DataType,
    group: Group,
    unit: str,
    doc: str,
    *,
    required: bool = False,
    nullable: bool = True,
    low: float | None = None,
    high: float | None = None,
) -> Column:
    return Column(name, dtype, group, required, nullable, unit, doc, low, high)


# OpenRTB 2.6 / AdCOM 1.0 creative attributes, by number (1-17): a creative's and a request's
# block list travel as bitmasks (bit k-1 for attribute k).
CREATIVE_ATTRIBUTES = (
    "audio_autoplay",
    "audio_user_initiated",
    "expandable_automatic",
    "expandable_click",
    "expandable_rollover",
    "video_autoplay",
    "video_user_initiated",
    "pop",
    "provocative_imagery",
    "extreme_animation",
    "surveys",
    "text_only",
    "user_interactive",
    "dialog_style",
    "audio_button",
    "skip_button",
    "flash",
)
ATTRIBUTE_MASK = (1 << len(CREATIVE_ATTRIBUTES)) - 1

STR = pl.String()
F64 = pl.Float64()
BOOL = pl.Boolean()

# The times a log or a request may carry: the cap store counts days since 1970 unsigned, and
# Redis's Lua reads epoch microseconds as doubles, exact below 2**53 (the year 2255).
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2200, 1, 1, tzinfo=UTC)

COLUMNS: tuple[Column, ...] = (
    # --- request: the same value on every candidate row of one request ---
    _c("request_id", STR, "request", "id", "ad opportunity id", required=True, nullable=False),
    _c(
        "ts",
        TIMESTAMP,
        "request",
        "UTC, microseconds",
        "time of the opportunity",
        required=True,
        nullable=False,
    ),
    _c(
        "user_id",
        STR,
        "request",
        "id",
        "the person the ad would reach",
        required=True,
        nullable=False,
    ),
    _c("household_id", STR, "request", "id", "household sharing OTT and IoT devices"),
    _c("device_id", STR, "request", "id", "device showing or speaking the ad"),
    _c(
        "touchpoint",
        TOUCHPOINT,
        "request",
        "|".join(TOUCHPOINTS),
        "kind of touchpoint",
        required=True,
        nullable=False,
    ),
    _c(
        "slot",
        SLOT,
        "request",
        "|".join(SLOTS),
        "ad slot on the touchpoint",
        required=True,
        nullable=False,
    ),
    _c("scene", SCENE, "request", "|".join(SCENES), "who is around: alone, family, daily life"),
    _c(
        "local_hour",
        pl.Int8(),
        "request",
        "hour 0-23, device local time",
        "local hour of the opportunity",
        low=0,
        high=23,
    ),
    _c(
        "user_interests",
        pl.List(STR),
        "request",
        "list of tags, strongest first",
        "interest tags of the user profile",
    ),
    _c("age_band", AGE_BAND, "request", "|".join(AGE_BANDS), "age band of the user"),
    _c(
        "activity_level",
        ACTIVITY_LEVEL,
        "request",
        "|".join(ACTIVITY_LEVELS),
        "how often the user uses the ecosystem",
    ),
    _c(
        "content_rating",
        RATING,
        "request",
        "|".join(RATINGS),
        "rating of the content around the slot",
    ),
    _c(
        "audience",
        AUDIENCE,
        "request",
        "|".join(AUDIENCES),
        "who is present, as the device or ad server knows it; null when unknown",
    ),
    _c(
        "assistant_state",
        ASSISTANT_STATE,
        "request",
        "|".join(ASSISTANT_STATES),
        "the voice assistant's task state when the opportunity comes; null when unknown",
    ),
    _c(
        "blocked_categories",
        pl.List(STR),
        "request",
        "list of categories",
        "ad categories the request refuses (OpenRTB bcat)",
    ),
    _c(
        "blocked_advertisers",
        pl.List(STR),
        "request",
        "list of advertiser ids",
        "advertisers the request refuses (OpenRTB badv)",
    ),
    _c(
        "content_categories",
        pl.List(STR),
        "request",
        "list of content categories (tags or taxonomy ids)",
        "what the content around the slot is about (OpenRTB content.cat); campaigns may "
        "exclude some (excluded_content)",
    ),
    _c(
        "blocked_attributes",
        pl.UInt32(),
        "request",
        "bitmask: bit k-1 set for OpenRTB creative attribute k (1-17)",
        "creative attributes the request refuses (OpenRTB battr); null or 0: none",
        low=0,
        high=ATTRIBUTE_MASK,
    ),
    # --- candidate ad ---
    _c("ad_id", STR, "candidate", "id", "candidate ad (line item)", required=True, nullable=False),
    _c("creative_id", STR, "candidate", "id", "creative the ad renders"),
    _c("campaign_id", STR, "candidate", "id", "campaign the ad belongs to"),
    _c("advertiser_id", STR, "candidate", "id", "advertiser paying for the campaign"),
    _c("category", STR, "candidate", "tag", "product category, same vocabulary as interests"),
    _c(
        "format",
        FORMAT,
        "candidate",
        "|".join(FORMATS),
        "creative format",
        required=True,
        nullable=False,
    ),
    _c("duration_s", F64, "candidate", "seconds", "play or display length", low=0, high=3600),
    _c(
        "bid",
        F64,
        "candidate",
        "money per pricing unit (per 1000 impressions for cpm)",
        "advertiser's bid",
        required=True,
        nullable=False,
        low=0,
    ),
    _c(
        "pricing",
        PRICING_MODEL,
        "candidate",
        "|".join(PRICING),
        "what the bid pays for",
        required=True,
        nullable=False,
    ),
    _c(
        "suitability_tier",
        RATING,
        "candidate",
        "|".join(RATINGS),
        "youngest content rating the ad is suitable for",
    ),
    _c(
        "creative_attributes",
        pl.UInt32(),
        "candidate",
        "bitmask: bit k-1 set for OpenRTB creative attribute k (1-17)",
        "what the creative does (OpenRTB attr: audio auto-play, expandable, pop, flashing, ...); "
        "null: none known",
        low=0,
        high=ATTRIBUTE_MASK,
    ),
    _c(
        "excluded_content",
        pl.List(STR),
        "candidate",
        "list of content categories",
        "content the ad's campaign must not appear next to (its content exclusions); null or "
        "empty: none",
    ),
    _c(
        "advertiser_domain",
        STR,
        "candidate",
        "domain",
        "the advertiser's domain (OpenRTB adomain); a request's blocked_advertisers entry "
        "blocks it and its subdomains, in any case",
    ),
    # --- logging policy ---
    _c(
        "propensity",
        F64,
        "logging",
        "probability in (0, 1]",
        "probability the logging policy showed this candidate; null when unknown",
        low=0,
        high=1,
    ),
    _c(
        "shown",
        BOOL,
        "logging",
        "bool",
        "the logging policy showed this candidate",
        required=True,
        nullable=False,
    ),
    # --- outcomes: null when the candidate was not shown ---
    _c("engaged", BOOL, "outcome", "bool", "click, tap, voice follow-up or equivalent"),
    _c("converted", BOOL, "outcome", "bool", "purchase, install or other action"),
    _c("negative", BOOL, "outcome", "bool", "skip, close, dislike, hide or complaint"),
    _c(
        "negative_kind",
        NEGATIVE_KIND,
        "outcome",
        "|".join(NEGATIVE_KINDS),
        "which negative feedback; null when none",
    ),
    _c(
        "watch_fraction",
        F64,
        "outcome",
        "fraction 0-1",
        "share of a video/audio ad played",
        low=0,
        high=1,
    ),
    # --- truth: only in synthetic logs; never a model input ---
    _c("true_p_engaged", F64, "truth", "probability", "generator's true P(engaged)", low=0, high=1),
    _c(
        "true_p_negative",
        F64,
        "truth",
        "probability",
        "generator's true P(negative)",
        low=0,
        high=1,
    ),
    _c(
        "true_p_converted",
        F64,
        "truth",
        "probability",
        "generator's true P(converted)",
        low=0,
        high=1,
    ),
)

COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
REQUEST_COLUMNS = tuple(c.name for c in COLUMNS if c.group == "request")
CANDIDATE_COLUMNS = tuple(c.name for c in COLUMNS if c.group == "candidate")
TRUTH_COLUMNS = tuple(c.name for c in COLUMNS if c.group == "truth")
OUTCOME_COLUMNS = tuple(c.name for c in COLUMNS if c.group == "outcome")
REQUIRED_COLUMNS = tuple(c.name for c in COLUMNS if c.required)


def polars_schema(include_truth: bool = True) -> pl.Schema:
    """The log's polars schema, in canonical column order."""
    return pl.Schema([(c.name, c.dtype) for c in COLUMNS if include_truth or c.group != "truth"])


def arrow_schema(include_truth: bool = True) -> object:
    """The log's Arrow schema (a ``pyarrow.Schema``), for writers outside polars."""
    return pl.DataFrame(schema=polars_schema(include_truth)).to_arrow().schema
