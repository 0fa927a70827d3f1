"""Frequency-cap rules: caps, minimum gaps and the user's own negative feedback.

A *family* of counters is (scope, target, filter): whose exposures (user, household, device),
to what (a creative, an ad, a campaign, an advertiser, a category, or any ad), and optionally
only those on one touchpoint or slot. A cap counts a family's exposures in a rolling window (or
for the lifetime of the counters) and compares the count with its limit; a gap rule looks at
the time since the family's latest exposure. The strictest applicable rule decides: a candidate
is capped as soon as one applicable rule says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.schema import SLOT_TOUCHPOINT, SLOTS, TOUCHPOINTS

Scope = Literal["user", "household", "device"]
COMPETITOR = "competitor"  # the column of an ad's competition label: its category's group
Target = Literal["creative", "ad", "campaign", "advertiser", "category", "competitor", "any"]
SCOPE_COLUMN = {"user": "user_id", "household": "household_id", "device": "device_id"}
TARGET_COLUMN: dict[str, str | None] = {
    "creative": "creative_id",
    "ad": "ad_id",
    "campaign": "campaign_id",
    "advertiser": "advertiser_id",
    "category": "category",
    "competitor": COMPETITOR,  # derived from the category (see competitor_of)
    "any": None,
}
FeedbackKind = Literal["skip", "close", "dislike", "hide", "complaint"]
BLOCKING_KINDS: tuple[FeedbackKind, ...] = ("hide", "dislike", "complaint")
CONVERSION = "conversion"  # what a block rule's ``on`` names for a conversion
BlockOn = Literal["skip", "close", "dislike", "hide", "complaint", "conversion"]
BlockTarget = Literal["campaign", "advertiser", "category"]
MAX_WINDOW_S = 180 * 86_400
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


def competitor_ids(
    ids: Mapping[str, str | None], groups: Mapping[str, str]
) -> dict[str, str | None]:
    """An impression's id columns with its competition label (``competitor``): its category's
    group in ``groups`` (``CapsConfig.competitor_of``), or the category itself."""
    category = ids.get("category")
    return {**ids, COMPETITOR: None if category is None else groups.get(category, category)}


def competitor_column(groups: Mapping[str, str]) -> pl.Expr:
    """:func:`competitor_ids` over a frame: the ``competitor`` column from ``category``."""
    category = pl.col("category").cast(pl.String)
    return (category.replace(dict(groups)) if groups else category).alias(COMPETITOR)


def parse_duration(text: str) -> int:
    """``"90s"``, ``"5m"``, ``"24h"``, ``"30d"`` -> seconds.

    Raises:
        ValueError: not of that form, or zero.
    """
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 5m, 24h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


class Family(BaseModel):
    """A family of counters: scope x target, optionally filtered to a touchpoint or slot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Scope
    target: Target
    touchpoint: str | None = None
    slot: str | None = None

    @model_validator(mode="after")
    def _filter(self) -> Family:
        if self.touchpoint is not None and self.touchpoint not in TOUCHPOINTS:
            raise ValueError(f"unknown touchpoint {self.touchpoint!r}")
        if self.slot is not None:
            if self.slot not in SLOTS:
                raise ValueError(f"unknown slot {self.slot!r}")
            if self.touchpoint is not None and SLOT_TOUCHPOINT[self.slot] != self.touchpoint:
                raise ValueError(f"slot {self.slot!r} is not on touchpoint {self.touchpoint!r}")
        return self

    def family(self) -> Family:
        """This rule's counter family (rules subclass ``Family``)."""
        return Family(
            scope=self.scope, target=self.target, touchpoint=self.touchpoint, slot=self.slot
        )

    def matches(self, touchpoint: str, slot: str) -> bool:
        """Whether an event or request on this touchpoint and slot belongs to the family."""
        return (self.touchpoint in (None, touchpoint)) and (self.slot in (None, slot))


class CapRule(Family):
    """At most ``limit`` exposures of the family within ``window`` (or ``lifetime``)."""

    name: str = ""
    window: str = Field(description="rolling window: 90m, 24h, 30d (<= 180d) or lifetime")
    limit: int = Field(ge=1)
    campaign_id: str | None = Field(
        None, description="a campaign's own cap (carried by a request): only its candidates"
    )

    @model_validator(mode="after")
    def _window(self) -> CapRule:
        if self.campaign_id is not None and self.target != "campaign":
            raise ValueError("a campaign's own cap must have target campaign")
        if self.window != "lifetime":
            seconds = parse_duration(self.window)
            if seconds > MAX_WINDOW_S:
                raise ValueError(f"window {self.window} is longer than 180d; use lifetime")
        return self

    @property
    def window_s(self) -> int | None:
        """Window in seconds; ``None`` for lifetime."""
        return None if self.window == "lifetime" else parse_duration(self.window)


CampaignCaps = Mapping[str, Sequence[CapRule]]  # a request's campaigns' own caps, by campaign id


MAX_GAP_S = 7 * 86_400  # a minimum gap's longest: the event log keeps what it reads


class GapRule(Family):
    """No exposure of the family within ``min_gap`` of the previous one."""

    name: str = ""
    min_gap: str

    @model_validator(mode="after")
    def _gap(self) -> GapRule:
        if parse_duration(self.min_gap) > MAX_GAP_S:
            raise ValueError("min_gap longer than 7d; use a cap rule")
        return self

    @property
    def min_gap_s(self) -> int:
        """The gap in seconds."""
        return parse_duration(self.min_gap)


class BlockRule(BaseModel):
    """What the user did that stops a campaign, an advertiser or a category for them (and, by
    config, their household) for a while: a negative feedback kind (the user's own voice) or a
    conversion (they have what the ad offered). Stored and checked as one kind of block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: list[BlockOn] = Field(min_length=1, description="feedback kinds, or conversion")
    target: BlockTarget = "campaign"
    household: bool = Field(False, description="block for the whole household too")
    duration: str = "30d"

    @model_validator(mode="after")
    def _duration(self) -> BlockRule:
        if self.duration_s > MAX_WINDOW_S:
            raise ValueError(f"duration {self.duration} is longer than 180d")
        return self

    @property
    def duration_s(self) -> int:
        """Block duration in seconds."""
        return parse_duration(self.duration)

    def applies(self, kind: str) -> bool:
        """Whether an event of this kind (a feedback kind or ``conversion``) sets the block."""
        return kind in self.on


class FeedbackBlock(BaseModel):
    """The user's own voice: hide, dislike or complaint blocks a campaign or advertiser (the
    first block rule; ``[[caps.blocks]]`` adds others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[FeedbackKind] = Field(default_factory=lambda: list(BLOCKING_KINDS))
    target: Literal["campaign", "advertiser"] = "campaign"
    household: bool = Field(False, description="block for the whole household too")
    duration: str = "30d"

    @property
    def duration_s(self) -> int:
        """Block duration in seconds."""
        return parse_duration(self.duration)

    def rules(self) -> list[BlockRule]:
        """This section as a block rule (none when it lists no kind)."""
        if not self.kinds:
            return []
        return [BlockRule(on=list(self.kinds), **self.model_dump(exclude={"kinds"}))]


class SeparationRule(BaseModel):
    """Stream separation: on one screen (a device, or a household's or user's screens), no ad
    of the advertiser of an ad shown within ``min_gap``, nor of a competing category (the
    same category, or one of its ``caps.competing`` group), across requests and pods. Checked
    as minimum gaps on the cap store's recency (the same read); its refusals are
    COMPETITIVE_SEPARATION."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    scope: Scope = "device"
    touchpoint: str | None = None
    slot: str | None = None
    advertiser: bool = Field(True, description="keep one advertiser's ads apart")
    categories: bool = Field(True, description="keep competing categories apart")
    min_gap: str

    @model_validator(mode="after")
    def _something(self) -> SeparationRule:
        if not (self.advertiser or self.categories):
            raise ValueError("keeps nothing apart: set advertiser or categories")
        self.gaps()  # the filter and the gap are checked as a gap rule's
        return self

    def gaps(self) -> list[GapRule]:
        """The minimum gaps it stands for (advertiser, then competitor)."""
        targets = ["advertiser"] * self.advertiser + [COMPETITOR] * self.categories
        where = {"touchpoint": self.touchpoint, "slot": self.slot, "min_gap": self.min_gap}
        return [
            GapRule.model_validate(
                {"name": f"{self.name} ({t})", "scope": self.scope, "target": t, **where}
            )
            for t in targets
        ]


class CapsConfig(BaseModel):
    """The ``[caps]`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[CapRule] = Field(default_factory=list)
    min_gaps: list[GapRule] = Field(default_factory=list)
    feedback: FeedbackBlock = Field(default_factory=FeedbackBlock)
    blocks: list[BlockRule] = Field(
        default_factory=list,
        description="more blocks: a feedback kind or a conversion stops a target for a while",
    )

    separation: list[SeparationRule] = Field(default_factory=list)
    competing: dict[str, list[str]] = Field(
        default_factory=dict,
        description="groups of categories that compete: kept apart as one (pods, separation)",
    )

    @model_validator(mode="after")
    def _groups(self) -> CapsConfig:
        seen: dict[str, str] = {}
        for group, categories in self.competing.items():
            for c in categories:
                if c in seen and seen[c] != group:
                    raise ValueError(f"competing: {c!r} is in both {seen[c]!r} and {group!r}")
                seen[c] = group
        return self

    @property
    def block_rules(self) -> list[BlockRule]:
        """Every block rule: ``feedback``'s, then ``blocks``."""
        return [*self.feedback.rules(), *self.blocks]

    @property
    def gap_rules(self) -> list[GapRule]:
        """Every minimum gap: ``min_gaps``, then the separation rules' (:attr:`separating`)."""
        return [*self.min_gaps, *(g for s in self.separation for g in s.gaps())]

    @property
    def separating(self) -> slice:
        """Which of :attr:`gap_rules` are stream separation (their refusals' reason differs)."""
        return slice(len(self.min_gaps), None)

    @property
    def competitor_of(self) -> dict[str, str]:
        """Category -> its competition label (its group; a category in none is its own)."""
        return {c: group for group, cats in self.competing.items() for c in cats}
