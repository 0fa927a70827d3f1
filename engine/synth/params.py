"""Parameters of the synthetic world. Everything here is written to ``<log>.truth.json``.

The world is small enough to reason about and rich enough to exercise every part of admatch:
households share OTT, IoT and voice devices, every user has a phone, advertisers compete in the
same categories, traffic follows daily rhythms per touchpoint, and the true probabilities of
engagement and negative feedback depend only on things a model can observe (the user's ranked
interest tags, slot x format, hour, the ad itself, and recent exposures).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from features.schema import FORMATS, SLOTS, TOUCHPOINTS

CATEGORIES = (
    "music",
    "sports",
    "food",
    "travel",
    "auto",
    "finance",
    "fashion",
    "gaming",
    "health",
    "home",
    "kids",
    "tech",
    "beauty",
    "alcohol",
)
TIERS_BY_CATEGORY = {"alcohol": "mature", "gaming": "teen", "kids": "kids"}

# True intrusiveness of a format on a slot, 0 (unnoticeable) .. 1 (very disruptive).
INTRUSIVENESS: dict[str, dict[str, float]] = {
    "voice_reply": {"audio": 0.9, "interactive": 0.75, "video": 0.95, "image": 0.6, "text": 0.5},
    "voice_break": {"audio": 0.4, "interactive": 0.3, "video": 0.7, "image": 0.3, "text": 0.2},
    "ott_boot": {"video": 0.8, "image": 0.3, "interactive": 0.5, "audio": 0.7, "text": 0.2},
    "ott_home_banner": {"video": 0.4, "image": 0.1, "interactive": 0.15, "audio": 0.6, "text": 0.1},
    "ott_pause": {"video": 0.6, "image": 0.15, "interactive": 0.25, "audio": 0.6, "text": 0.1},
    "ott_screensaver": {
        "video": 0.3,
        "image": 0.05,
        "interactive": 0.2,
        "audio": 0.5,
        "text": 0.05,
    },
    "ott_preroll": {"video": 0.5, "image": 0.3, "interactive": 0.4, "audio": 0.5, "text": 0.3},
    "iot_idle_screen": {
        "image": 0.05,
        "video": 0.3,
        "text": 0.05,
        "audio": 0.7,
        "interactive": 0.2,
    },
    "iot_notification": {"image": 0.5, "video": 0.8, "text": 0.4, "audio": 0.8, "interactive": 0.6},
    "mobile_feed": {"video": 0.3, "image": 0.1, "text": 0.1, "interactive": 0.2, "audio": 0.6},
    "mobile_splash": {"video": 0.6, "image": 0.35, "text": 0.3, "interactive": 0.45, "audio": 0.8},
}
SLOT_ENGAGE: dict[str, float] = {
    "voice_reply": 0.2,
    "voice_break": -0.1,
    "ott_boot": -0.3,
    "ott_home_banner": 0.0,
    "ott_pause": 0.1,
    "ott_screensaver": -0.4,
    "ott_preroll": -0.1,
    "iot_idle_screen": -0.5,
    "iot_notification": 0.1,
    "mobile_feed": 0.3,
    "mobile_splash": -0.2,
}
FORMAT_ENGAGE = {"video": 0.2, "interactive": 0.35, "image": 0.0, "audio": 0.0, "text": -0.3}
# Formats the ad server sends as candidates for each touchpoint.
TOUCHPOINT_FORMATS: dict[str, tuple[str, ...]] = {
    "ai_voice": ("audio", "interactive"),
    "ott": ("video", "image", "interactive"),
    "iot": ("image", "video", "text"),
    "mobile": ("video", "image", "text", "interactive"),
}
DURATIONS_S: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "video": ((6, 15, 30, 60), (0.25, 0.35, 0.3, 0.1)),
    "audio": ((10, 15, 30), (0.4, 0.4, 0.2)),
    "image": ((5, 10, 15), (0.4, 0.4, 0.2)),
    "text": ((5,), (1.0,)),
    "interactive": ((15, 30), (0.6, 0.4)),
}


def hour_profile(peaks: list[tuple[float, float, float]], floor: float) -> list[float]:
    """24 traffic weights: a floor plus circular Gaussian bumps (peak hour, width, height)."""
    weights = []
    for h in range(24):
        w = floor
        for peak, width, height in peaks:
            d = min(abs(h - peak), 24 - abs(h - peak))
            w += height * math.exp(-0.5 * (d / width) ** 2)
        weights.append(round(w, 6))
    return weights


class TruthParams(BaseModel):
    """Coefficients of the true engagement, negative-feedback and conversion probabilities."""

    model_config = ConfigDict(extra="forbid")

    engage_base: float = -3.0
    slot_engage: dict[str, float] = Field(default_factory=lambda: dict(SLOT_ENGAGE))
    format_engage: dict[str, float] = Field(default_factory=lambda: dict(FORMAT_ENGAGE))
    fit_from_intrusiveness: float = -0.8
    interest_rank_weight: list[float] = Field(default_factory=lambda: [1.6, 1.0, 0.5])
    ad_quality_sd: float = 0.35
    hour_engage_amplitude: float = 0.3
    hour_engage_peak: dict[str, float] = Field(
        default_factory=lambda: {"ai_voice": 8.0, "ott": 21.0, "iot": 12.0, "mobile": 20.0}
    )
    engage_fatigue_user_campaign_24h: float = -0.45
    negative_base: float = -3.3
    intrusiveness: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {s: dict(v) for s, v in INTRUSIVENESS.items()}
    )
    negative_intrusiveness: float = 2.4
    negative_per_30s: float = 0.7
    negative_late_hours: list[int] = Field(default_factory=lambda: [22, 23, 0, 1, 2, 3, 4, 5])
    negative_late: float = 0.7
    negative_fatigue_user_any_1h: float = 0.6
    negative_fatigue_household_any_24h: float = 0.25
    negative_interest: float = -0.6
    conversion_rate: dict[str, float] = Field(
        default_factory=lambda: {
            c: round(0.04 + 0.01 * (i % 7), 3) for i, c in enumerate(CATEGORIES)
        }
    )


class WorldParams(BaseModel):
    """Size and shape of the synthetic world and its traffic."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    rows: int = Field(1_000_000, gt=0)
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
    days: int = Field(14, gt=0, le=366)
    rows_per_household: int = Field(
        2_000, gt=0, description="log rows per household; sets the population size"
    )
    household_sizes: list[float] = Field(default_factory=lambda: [0.3, 0.3, 0.2, 0.15, 0.05])
    utc_offsets_h: dict[str, float] = Field(
        default_factory=lambda: {"8": 0.5, "9": 0.2, "0": 0.15, "-5": 0.15}
    )
    n_advertisers: int = Field(20, gt=0)
    campaigns_per_advertiser: tuple[int, int] = (1, 3)
    ads_per_campaign: tuple[int, int] = (1, 2)
    shared_creative_share: float = Field(0.15, ge=0, le=1)
    categories: list[str] = Field(default_factory=lambda: list(CATEGORIES))
    pricing_mix: dict[str, float] = Field(
        default_factory=lambda: {"cpm": 0.5, "cpc": 0.35, "cpa": 0.15}
    )
    bid_median: dict[str, float] = Field(
        default_factory=lambda: {"cpm": 15.0, "cpc": 0.8, "cpa": 12.0}
    )
    bid_sigma: float = 0.5
    format_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "video": 0.35,
            "image": 0.3,
            "audio": 0.15,
            "text": 0.1,
            "interactive": 0.1,
        }
    )
    touchpoint_mix: dict[str, float] = Field(
        default_factory=lambda: {"ai_voice": 0.2, "ott": 0.3, "iot": 0.15, "mobile": 0.35}
    )
    slot_mix: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "ai_voice": {"voice_reply": 0.6, "voice_break": 0.4},
            "ott": {
                "ott_boot": 0.15,
                "ott_home_banner": 0.3,
                "ott_pause": 0.15,
                "ott_screensaver": 0.1,
                "ott_preroll": 0.3,
            },
            "iot": {"iot_idle_screen": 0.7, "iot_notification": 0.3},
            "mobile": {"mobile_feed": 0.8, "mobile_splash": 0.2},
        }
    )
    hour_weights: dict[str, list[float]] = Field(
        default_factory=lambda: {
            "ai_voice": hour_profile([(7.5, 1.5, 3.0), (19.0, 2.0, 2.0)], 0.2),
            "ott": hour_profile([(21.0, 2.0, 4.0), (13.0, 2.0, 0.8)], 0.1),
            "iot": hour_profile([(12.0, 5.0, 1.5)], 0.3),
            "mobile": hour_profile([(12.5, 1.5, 1.5), (21.0, 2.5, 2.0)], 0.3),
        }
    )
    activity_mix: dict[str, float] = Field(
        default_factory=lambda: {"low": 0.3, "medium": 0.5, "high": 0.2}
    )
    activity_rate: dict[str, float] = Field(
        default_factory=lambda: {"low": 1.0, "medium": 3.0, "high": 8.0}
    )
    candidates_per_request: tuple[int, int] = (2, 8)
    pod_size: int = Field(2, ge=1, description="ads the logging policy shows on ott_preroll")
    policy: Literal["uniform", "greedy"] = "uniform"
    epsilon: float = Field(0.2, gt=0, le=1, description="exploration share of the greedy policy")
    no_ad_share: float = Field(0.1, ge=0, lt=1, description="requests the policy leaves empty")
    truth: TruthParams = Field(default_factory=TruthParams)

    def check_tables(self) -> None:
        """Reject tables that name unknown touchpoints, slots or formats."""
        from engine.errors import ConfigError

        problems = []
        for tp in list(self.touchpoint_mix) + list(self.slot_mix) + list(self.hour_weights):
            if tp not in TOUCHPOINTS:
                problems.append(("touchpoint_mix", f"unknown touchpoint {tp!r}"))
        for tp, slots in self.slot_mix.items():
            problems += [
                ("slot_mix", f"unknown slot {s!r} under {tp}") for s in slots if s not in SLOTS
            ]
        problems += [
            ("format_mix", f"unknown format {f!r}") for f in self.format_mix if f not in FORMATS
        ]
        if problems:
            raise ConfigError(problems, source="world parameters")
