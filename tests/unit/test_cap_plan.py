"""Planning lookups and the pure cap decision, without any store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from engine.caps import evaluate
from engine.caps.plan import FEATURE_FAMILIES, Planner, impression_writes, plan_request
from engine.caps.rules import CapRule, FeedbackBlock, GapRule, parse_duration
from engine.caps.store import Answers, CapReading, place
from features.exposure import EXPOSURE_SCHEMA, SCOPES
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
    plan = plan_request(CTX, CANDS, RULES, GAPS, FeedbackBlock().rules(), retention_s=7 * 86_400)
    families = [(lk.family.scope, lk.family.target, lk.family.slot) for lk in plan.lookups]
    assert len(families) == len(set(families)) == len(FEATURE_FAMILIES) + 1
    assert ("household", "any", "ott_boot") in families
    lk = next(x for x in plan.lookups if (x.family.scope, x.family.target) == ("user", "campaign"))
    assert plan.fields[lk.group] == ["c1"]
    assert plan.rows[lk.group].tolist() == [0, 0, -1]  # a null id reads nothing
    assert lk.day_windows == (30,) and 3_600 in lk.windows and lk.last  # shared by rule and gap
    rule_cols = {t.index for t in plan.shape.targets if t.output == "rule_counts"}
    assert rule_cols == {0, 1}  # the mobile-only rule does not apply on OTT
    assert plan.blocks == [("user", "u1", "campaign")] and plan.block_fields(
        plan.shape.blocks[0]
    ) == ["c1"]


def test_shapes_are_cached_per_situation_and_bind_campaign_caps() -> None:
    planner = Planner(RULES, GAPS, FeedbackBlock().rules(), 7 * 86_400)
    assert planner.shape(CTX) is planner.shape(CTX)
    assert planner.shape(CTX) is not planner.shape(replace(CTX, slot="ott_pause"))
    own = [CapRule(scope="user", target="campaign", window="1h", limit=1, campaign_id="c1")]
    plan = planner.plan(CTX, CANDS, own)
    target = next(t for t in plan.shape.targets if t.rule >= 0)
    assert target.index == len(RULES) and plan.applies(target).tolist() == [True, True, False]
    absent = [CapRule(scope="user", target="campaign", window="1h", limit=1, campaign_id="c9")]
    other = planner.plan(CTX, CANDS, absent)
    assert other.shape is plan.shape  # same shape: only the campaign differs
    assert not other.applies(next(t for t in other.shape.targets if t.rule >= 0)).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answers_are_placed_where_the_plan_says(seed: int) -> None:
    """``place`` puts each group's answers where the plan's targets say, for every candidate
    (checked one by one against the targets): a null id reads the defaults and no rule of its
    group applies, a campaign's own cap binds only its campaign, latest times become seconds
    since (none: NaN; a campaign recency also NaN where its window's count is 0)."""
    own = [CapRule(scope="user", target="campaign", window="1h", limit=1, campaign_id="c1")]
    plan = Planner(RULES, GAPS, FeedbackBlock().rules(), 7 * 86_400).plan(CTX, CANDS, own)
    rng = np.random.default_rng(seed)
    matrices = Answers(plan)
    for answers in matrices:
        fields = len(answers) - 1
        answers[:fields] = rng.integers(0, 5, size=(fields, answers.shape[1]))
        answers[:fields][rng.random((fields, answers.shape[1])) < 0.3] = -1  # no latest time
    blocked = rng.random(plan.n) < 0.5
    got = place(plan, matrices, blocked)
    outputs = np.hstack([got.exposures, got.rule_counts, got.gap_since])
    since, guard = plan.shape.since_outputs.tolist(), plan.shape.since_guards.tolist()
    guards = dict(zip(since, guard, strict=True))
    recency = {EXPOSURE_SCHEMA.names().index(f"since_{s}_campaign_s") for s in SCOPES}
    assert {c for c, g in guards.items() if g >= 0} == recency
    for t in plan.shape.targets:
        applies = plan.applies(t)
        for i in range(plan.n):
            value = matrices[t.group][plan.rows[t.group][i], t.column]
            if t.output != "exposures" and not applies[i]:
                value = np.nan  # the rule does not apply to this candidate
            column = plan.shape.output_column(t)
            if t.since:
                value = np.nan if value < 0 else (plan.t_us - value) / 1e6
                if guards[column] >= 0 and outputs[i, guards[column]] == 0:
                    value = np.nan  # no exposure in the recency's window
            np.testing.assert_equal(outputs[i, column], value, err_msg=f"{t} candidate {i}")
    assert np.isnan(got.rule_counts[2, 1])  # no campaign id: the campaign rule does not apply
    assert (got.blocked == blocked).all()


def test_candidate_ids_are_read_once_each() -> None:
    plan = plan_request(
        CTX,
        {**CANDS, "advertiser_id": np.array(["v2", "v1", "v2"], dtype=object)},
        RULES,
        GAPS,
        FeedbackBlock().rules(),
        retention_s=7 * 86_400,
    )
    g = plan.shape.columns.index("advertiser_id")
    assert plan.fields[g] == ["v2", "v1"] and plan.rows[g].tolist() == [0, 1, 0]
    assert plan.fields[plan.shape.columns.index(None)] == ["*"]


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
