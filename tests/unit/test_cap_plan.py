"""Planning lookups and the pure cap decision, without any store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.caps import evaluate
from engine.caps.plan import FEATURE_FAMILIES, impression_writes, plan_request
from engine.caps.rules import CapRule, FeedbackBlock, GapRule, parse_duration
from engine.caps.store import CapReading
from features.online import RequestContext

T = datetime(2026, 3, 3, 20, tzinfo=UTC)
CTX = RequestContext("r", T, "u1", "ott", "ott_boot", household_id="h1", device_id="tv1")
CANDS: dict[str, list[Any]] = {
    "ad_id": ["a", "b", "c"],
    "campaign_id": ["c1", "c1", None],
    "format": ["image"] * 3,
    "bid": [1.0] * 3,
    "pricing": ["cpm"] * 3,
}
RULES = [
    CapRule(scope="household", target="any", slot="ott_boot", window="24h", limit=1),
    CapRule(scope="user", target="campaign", window="30d", limit=9),
    CapRule(scope="user", target="campaign", window="1h", limit=1, touchpoint="mobile"),
]
GAPS = [GapRule(scope="user", target="campaign", min_gap="5m")]


def test_durations() -> None:
    assert [parse_duration(d) for d in ("90s", "5m", "24h", "30d")] == [90, 300, 86_400, 2_592_000]


def test_plan_reads_each_family_once_and_skips_rules_that_do_not_apply() -> None:
    plan = plan_request(CTX, CANDS, RULES, GAPS, FeedbackBlock(), retention_s=7 * 86_400)
    families = [(lk.family.scope, lk.family.target, lk.family.slot) for lk in plan.lookups]
    assert len(families) == len(set(families)) == len(FEATURE_FAMILIES) + 1
    assert ("household", "any", "ott_boot") in families
    lk = next(x for x in plan.lookups if (x.family.scope, x.family.target) == ("user", "campaign"))
    assert lk.fields == ["c1"] and lk.rows_field.tolist() == [0, 0, -1]  # null id reads nothing
    assert lk.day_windows == {30} and 3_600 in lk.windows and lk.last  # shared by rule and gap
    rule_cols = {col for name, col, *_ in plan.targets if name == "rule_counts"}
    assert rule_cols == {0, 1}  # the mobile-only rule does not apply on OTT
    assert plan.blocks == [("user", "u1", "campaign")] and plan.block_fields == ["c1"]


def test_capped_takes_the_strictest_rule_and_ignores_nan() -> None:
    reading = CapReading(
        exposures=np.zeros((3, 30)),
        rule_counts=np.array([[0, 3, np.nan], [1, 3, np.nan], [np.nan, np.nan, np.nan]]),
        gap_since=np.array([[600.0], [600.0], [np.nan]]),
        blocked=np.array([False, False, True]),
    )
    assert evaluate.capped(reading, RULES, GAPS).tolist() == [False, True, True]
    close = CapReading(
        reading.exposures,
        np.zeros((3, 3)),
        np.array([[100.0], [np.nan], [1e6]]),
        np.zeros(3, dtype=bool),
    )
    assert evaluate.capped(close, RULES, GAPS).tolist() == [True, False, False]


def test_impressions_feed_feature_families_and_matching_rule_families() -> None:
    ids: dict[str, str | None] = {
        "user_id": "u1",
        "household_id": "h1",
        "device_id": "tv1",
        "campaign_id": "c1",
        "advertiser_id": "v1",
    }
    boot = impression_writes(ids, "ott", "ott_boot", RULES, GAPS)
    pause = impression_writes(ids, "ott", "ott_pause", RULES, GAPS)
    assert len(boot) == len(FEATURE_FAMILIES) + 1  # + household x any on ott_boot
    assert len(pause) == len(FEATURE_FAMILIES)
    no_household = impression_writes({**ids, "household_id": None}, "ott", "ott_pause", RULES, GAPS)
    assert len(no_household) == len(FEATURE_FAMILIES) - 3
