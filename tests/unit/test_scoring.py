"""The scoring core: rules, reasons, bad requests, and properties of the decision."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.caps.rules import GapRule
from engine.config import COST_COMPONENTS
from engine.errors import InvalidArgument
from engine.scoring.scorer import Scorer
from engine.scoring.types import RANGED, Decision, PodLimits, ScoreRequest, check_ranged
from features.exposure import EXPOSURE_SCHEMA
from features.online import RequestContext

T = datetime(2026, 3, 3, 20, 15, tzinfo=UTC)
EXP = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}


def ctx(**kw: Any) -> RequestContext:
    base: dict[str, Any] = dict(
        request_id="r1",
        ts=T,
        user_id="u000001",
        household_id="h000001",
        device_id="tv000001",
        touchpoint="ott",
        slot="ott_pause",
        scene="personal",
        local_hour=20,
        user_interests=("sports", "food"),
        age_band="25_34",
        activity_level="medium",
        content_rating="general",
    )
    base.update(kw)
    return RequestContext(**base)


def cand(ad: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        ad_id=ad,
        creative_id="c" + ad,
        campaign_id="cmp_" + ad,
        advertiser_id="adv_" + ad,
        category="sports",
        format="image",
        duration_s=10.0,
        bid=20.0,
        pricing="cpm",
        suitability_tier="general",
    )
    base.update(kw)
    return base


def request(
    cands: list[dict[str, Any]],
    exposures: np.ndarray | None = None,
    pod: PodLimits | None = None,
    capped: np.ndarray | None = None,
    **kw: Any,
) -> ScoreRequest:
    cols = {k: [c[k] for c in cands] for k in cands[0]}
    return ScoreRequest(ctx(**kw), cols, exposures, pod, capped)


def reasons(d: Decision) -> dict[str, str]:
    return {a: str(r) for a, r in zip(d.ad_id, d.reason, strict=True)}


# --- rules, one reason each


def test_format_and_length_rules(scorer: Scorer) -> None:
    d = scorer.score(request([cand("a", format="audio"), cand("b", duration_s=45.0), cand("c")]))
    assert reasons(d) == {"a": "FORMAT_NOT_ALLOWED", "b": "FORMAT_NOT_ALLOWED", "c": "SELECTED"}
    assert d.selected == ["c"]


def test_brand_suitability(scorer: Scorer) -> None:
    cands = [cand("teen", suitability_tier="teen"), cand("kids", suitability_tier="kids")]
    d = scorer.score(request(cands, content_rating="kids"))
    assert reasons(d)["teen"] == "BRAND_UNSUITABLE"
    family = [cand("mature", suitability_tier="mature"), cand("teen", suitability_tier="teen")]
    d = scorer.score(request(family, scene="family", content_rating="mature"))
    assert reasons(d)["mature"] == "BRAND_UNSUITABLE"
    teen_row = d.rows()[1]
    assert teen_row["reason"] in ("SELECTED", "BELOW_RESERVE")
    assert teen_row["cost"]["family_scene"] > 0  # allowed, but it costs


def test_frequency_cap_from_exposure_counts(scorer: Scorer) -> None:
    exp = np.zeros((2, len(EXP)))
    exp[:, EXP["since_user_campaign_s"]] = np.nan
    exp[0, EXP["exp_user_campaign_24h"]] = 3  # the default config caps at 3 per day
    d = scorer.score(request([cand("a"), cand("b")], exposures=exp))
    assert reasons(d)["a"] == "FREQUENCY_CAPPED"
    assert d.rows()[0]["cost"]["fatigue"] > d.rows()[1]["cost"]["fatigue"]


def test_capped_mask_from_the_store_wins(scorer: Scorer) -> None:
    """A cap decision made at the edge from the cap store is applied as it is."""
    d = scorer.score(request([cand("a"), cand("b")], capped=np.array([False, True])))
    assert reasons(d)["b"] == "FREQUENCY_CAPPED" and reasons(d)["a"] == "SELECTED"


def test_campaign_gap_from_exposures(scorer: Scorer) -> None:
    """Without a store decision, rules the exposures express still hold (no filter)."""
    config = scorer.config.model_copy(
        update={
            "caps": scorer.config.caps.model_copy(
                update={
                    "min_gaps": [
                        GapRule(scope="user", target="campaign", min_gap="10m"),
                        GapRule(
                            scope="household", target="campaign", touchpoint="ott", min_gap="5m"
                        ),
                    ]
                }
            )
        }
    )
    gapped = Scorer(scorer.model, config)
    exp = np.zeros((2, len(EXP)))
    exp[:, EXP["since_user_campaign_s"]] = [120.0, 3_600.0]
    exp[:, EXP["since_household_campaign_s"]] = np.nan
    exp[:, EXP["since_device_campaign_s"]] = np.nan
    d = gapped.score(request([cand("a"), cand("b")], exposures=exp))
    assert reasons(d)["a"] == "FREQUENCY_CAPPED" and reasons(d)["b"] != "FREQUENCY_CAPPED"


def test_zero_bids_mean_no_ad(scorer: Scorer) -> None:
    d = scorer.score(request([cand("a", bid=0.0), cand("b", bid=0.0)]))
    assert d.no_ad and set(reasons(d).values()) == {"BELOW_RESERVE"}


def test_pod_separation_and_duration(scorer: Scorer) -> None:
    cands = [
        cand("v1", format="video", duration_s=30.0, bid=100.0, advertiser_id="X", category="auto"),
        cand("v2", format="video", duration_s=15.0, bid=70.0, advertiser_id="X", category="food"),
        cand("v3", format="video", duration_s=15.0, bid=50.0, advertiser_id="Y", category="auto"),
        cand("v4", format="video", duration_s=30.0, bid=40.0, advertiser_id="Z", category="tech"),
        cand("v5", format="video", duration_s=15.0, bid=25.0, advertiser_id="W", category="home"),
        cand("v6", format="video", duration_s=5.0, bid=20.0, advertiser_id="V", category="kids"),
    ]
    d = scorer.score(request(cands, slot="ott_preroll", pod=PodLimits(2, 45.0)))
    assert reasons(d) == {
        "v1": "SELECTED",
        "v2": "COMPETITIVE_SEPARATION",  # same advertiser as v1
        "v3": "COMPETITIVE_SEPARATION",  # same category as v1
        "v4": "POD_FULL",  # 30 s more would pass the 45 s break
        "v5": "SELECTED",
        "v6": "POD_FULL",  # two ads already
    }
    assert d.selected == ["v1", "v5"] and list(d.rank) == [1, 0, 0, 0, 2, 0]


def test_a_pod_keeps_competing_categories_apart(scorer: Scorer) -> None:
    """caps.competing (shipped: mobility = auto, ride_hailing, car_rental) in a pod."""
    cands = [
        cand("a", format="video", duration_s=15.0, bid=100.0, advertiser_id="X", category="auto"),
        cand(
            "b", format="video", duration_s=15.0, bid=70.0, advertiser_id="Y", category="car_rental"
        ),
        cand("c", format="video", duration_s=15.0, bid=50.0, advertiser_id="Z", category="food"),
    ]
    d = scorer.score(request(cands, slot="ott_preroll", pod=PodLimits(2, 45.0)))
    assert reasons(d) == {"a": "SELECTED", "b": "COMPETITIVE_SEPARATION", "c": "SELECTED"}


def test_decision_carries_versions_and_parts(scorer: Scorer) -> None:
    d = scorer.score(request([cand("a"), cand("b", pricing="cpc", bid=0.9)]))
    assert d.model_version == scorer.model.version and d.config_version == "default-1"
    row = d.rows()[1]
    assert set(row["cost"]) == set(COST_COMPONENTS)
    assert row["expected_value"] == pytest.approx(0.9 * row["p_engage"])
    lam = scorer.config.scoring.cost_to_money
    assert row["utility"] == pytest.approx(row["expected_value"] - lam * row["cost_total"])
    assert sum(row["cost"].values()) == pytest.approx(row["cost_total"])


# --- bad requests


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: request([cand("a")], touchpoint="radio"), "request.touchpoint"),
        (lambda: request([cand("a")], slot="voice_reply"), "request.slot"),
        (lambda: request([cand("a", bid=math.nan)]), "request.candidates[0].bid"),
        (lambda: request([cand("a"), cand("b", bid=-1.0)]), "request.candidates[1].bid"),
        (lambda: request([cand("a", bid=math.inf)]), "request.candidates[0].bid"),
        (lambda: request([cand("a", bid=None)]), "request.candidates[0].bid"),
        (
            lambda: request([cand("a", duration_s=-math.inf)]),
            "request.candidates[0].duration_s",
        ),
        (lambda: request([cand("a", duration_s=-1.0)]), "request.candidates[0].duration_s"),
        (lambda: request([cand("a", duration_s=math.nan)]), "request.candidates[0].duration_s"),
        (lambda: request([cand("a"), cand("b", duration_s=3601.0)]), "candidates[1].duration_s"),
        (lambda: request([cand("a"), cand("a")]), "request.candidates[1].ad_id"),
        (lambda: ScoreRequest(ctx(), {"ad_id": []}), "request.candidates"),
        (lambda: request([cand("a", format="hologram")]), "candidates.format"),
    ],
    ids=[
        "unknown-touchpoint",
        "slot-of-other-touchpoint",
        "nan-bid",
        "negative-bid",
        "infinite-bid",
        "null-bid",
        "minus-infinite-duration",
        "negative-duration",
        "nan-duration",
        "duration-over-an-hour",
        "duplicate-ad",
        "empty",
        "unknown-format",
    ],
)
def test_bad_requests_name_the_field(scorer: Scorer, build: Any, field: str) -> None:
    """Where a request enters (``validate``), or, for a value off a vocabulary, the feature
    core's reading of it."""
    with pytest.raises(InvalidArgument) as info:
        request = build()
        request.validate()
        scorer.score(request)
    assert info.value.field.endswith(field)


def test_a_missing_duration_is_no_error(scorer: Scorer) -> None:
    decision = scorer.score(request([cand("a", duration_s=None), cand("b")]))
    assert len(decision.ad_id) == 2


# --- properties

SLOTS_ONE = [
    ("ott", "ott_pause"),
    ("ott", "ott_home_banner"),
    ("mobile", "mobile_feed"),
    ("iot", "iot_idle_screen"),
    ("ai_voice", "voice_break"),
]
FORMATS = {
    "ott": ["image", "video", "interactive"],
    "mobile": ["image", "video", "text"],
    "iot": ["image", "text", "video"],
    "ai_voice": ["audio", "interactive"],
}


@st.composite
def requests(draw: st.DrawFn, pod: bool = False) -> ScoreRequest:
    tp, slot = ("ott", "ott_preroll") if pod else draw(st.sampled_from(SLOTS_ONE))
    n = draw(st.integers(1, 12))
    cands = []
    for i in range(n):
        cands.append(
            cand(
                f"ad{i:02d}",
                format=draw(st.sampled_from(["video", "interactive"] if pod else FORMATS[tp])),
                duration_s=float(draw(st.sampled_from([5, 10, 15, 30]))),
                bid=draw(st.floats(0.0, 60.0, allow_nan=False)),
                pricing=draw(st.sampled_from(["cpm", "cpc", "cpa"])),
                advertiser_id=f"adv{draw(st.integers(0, 4))}",
                category=draw(st.sampled_from(["auto", "food", "sports", "tech"])),
            )
        )
    exp = np.zeros((n, len(EXP)))
    exp[:, EXP["exp_user_any_1h"]] = draw(st.integers(0, 3))
    exp[:, EXP["since_user_campaign_s"]] = np.nan
    hour = draw(st.integers(0, 23))
    return request(cands, exposures=exp, touchpoint=tp, slot=slot, local_hour=hour, device_id="d1")


PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def with_bid(req: ScoreRequest, i: int, factor: float) -> ScoreRequest:
    bids = list(req.candidates["bid"])
    bids[i] = bids[i] * factor + 0.01
    return dataclasses.replace(req, candidates={**req.candidates, "bid": bids})


@PROPERTY
@given(requests(), st.data())
def test_raising_a_bid_never_lowers_utility_or_rank(
    scorer: Scorer, req: ScoreRequest, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(req.candidates["ad_id"]) - 1))
    before = scorer.score(req)
    after = scorer.score(with_bid(req, i, data.draw(st.floats(1.0, 5.0))))
    assert after.utility[i] >= before.utility[i]
    if before.rank[i] > 0:
        assert 0 < after.rank[i] <= before.rank[i]


@PROPERTY
@given(requests(pod=True), st.data())
def test_raising_a_bid_in_a_pod_never_lowers_rank(
    scorer: Scorer, req: ScoreRequest, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(req.candidates["ad_id"]) - 1))
    before = scorer.score(req)
    after = scorer.score(with_bid(req, i, data.draw(st.floats(1.0, 5.0))))
    if before.rank[i] > 0:
        assert 0 < after.rank[i] <= before.rank[i]


def scaled(s: Scorer, component: str, factor: float) -> Scorer:
    weights = s.config.scoring.weights.model_copy(
        update={component: getattr(s.config.scoring.weights, component) * factor + 0.1}
    )
    scoring = s.config.scoring.model_copy(update={"weights": weights})
    return Scorer(s.model, s.config.model_copy(update={"scoring": scoring}))


@PROPERTY
@given(
    requests(),
    st.sampled_from(["intrusiveness", "length", "negative_feedback"]),
    st.floats(1.5, 20.0),
)
def test_raising_a_weight_never_selects_more_of_what_it_penalises(
    scorer: Scorer, req: ScoreRequest, component: str, factor: float
) -> None:
    j = COST_COMPONENTS.index(component)
    before = scorer.score(req)
    heavier = scaled(scorer, component, factor)
    after = heavier.score(req)
    if after.selected:
        assert before.selected, "a heavier cost weight made an ad appear"
        unweighted_before = before.costs[before.rank > 0, j] / scorer.rules.weights[j]
        unweighted_after = after.costs[after.rank > 0, j] / heavier.rules.weights[j]
        assert unweighted_after[0] <= unweighted_before[0] + 1e-12


@PROPERTY
@given(requests())
def test_selected_ads_beat_the_reserve_else_no_ad(scorer: Scorer, req: ScoreRequest) -> None:
    d = scorer.score(req)
    reserve = scorer.config.scoring.reserve
    assert all(d.utility[d.rank > 0] > reserve)
    if np.all(d.utility <= reserve):
        assert d.no_ad


@PROPERTY
@given(requests(pod=True), st.integers(1, 3), st.sampled_from([None, 20.0, 45.0]))
def test_pods_respect_count_duration_and_separation(
    scorer: Scorer, req: ScoreRequest, max_ads: int, max_total: float | None
) -> None:
    req = dataclasses.replace(req, pod=PodLimits(max_ads, max_total))
    d = scorer.score(req)
    picked = d.rank > 0
    assert picked.sum() <= max_ads
    durations = np.asarray(req.candidates["duration_s"])[picked]
    if max_total is not None:
        assert durations.sum() <= max_total
    for col in ("advertiser_id", "category"):
        values = np.asarray(req.candidates[col])[picked]
        assert len(set(values)) == len(values)
    assert sorted(d.rank[picked]) == list(range(1, int(picked.sum()) + 1))


@PROPERTY
@given(requests(pod=True) | requests(), st.randoms())
def test_decisions_are_deterministic_and_order_free(
    scorer: Scorer, req: ScoreRequest, rnd: Any
) -> None:
    a, b = scorer.score(req), scorer.score(req)
    assert a.selected == b.selected and np.array_equal(a.utility, b.utility)
    order = list(range(len(req.candidates["ad_id"])))
    rnd.shuffle(order)
    shuffled = dataclasses.replace(
        req,
        candidates={k: [v[i] for i in order] for k, v in req.candidates.items()},
        exposures=req.exposures[order] if req.exposures is not None else None,
    )
    c = scorer.score(shuffled)
    assert c.selected == a.selected
    assert reasons(c) == reasons(a)


def test_batch_equals_one_at_a_time(scorer: Scorer) -> None:
    reqs = [
        request(
            [cand("a"), cand("b", bid=35.0), cand("c", format="video")],
            request_id=f"r{i}",
            local_hour=i,
        )
        for i in range(6)
    ]
    batch = scorer.score_batch(reqs)
    for req, d in zip(reqs, batch, strict=True):
        single = scorer.score(req)
        assert single.selected == d.selected and np.allclose(single.utility, d.utility)
        assert d.request_id == req.context.request_id


def test_json_campaign_caps_are_parsed_and_checked() -> None:
    from engine.scoring.jsonio import request_from_json

    doc: dict[str, Any] = {
        "request_id": "r",
        "ts": "2026-03-03T20:15:00+00:00",
        "user_id": "u",
        "touchpoint": "ott",
        "slot": "ott_pause",
        "candidates": [cand("a")],
        "campaign_caps": {"cmp_a": [{"scope": "household", "window": "7d", "limit": 2}]},
    }
    req = request_from_json(doc)
    assert req.campaign_caps is not None
    (rule,) = req.campaign_caps["cmp_a"]
    assert (rule.campaign_id, rule.target, rule.scope, rule.limit) == (
        "cmp_a",
        "campaign",
        "household",
        2,
    )
    doc["campaign_caps"] = {"cmp_a": [{"scope": "planet", "window": "7d", "limit": 2}]}
    with pytest.raises(InvalidArgument) as info:
        request_from_json(doc)
    assert info.value.field == "request.campaign_caps.cmp_a[0]"


def _ranged_cases() -> list[tuple[str, list[Any], int | None]]:
    """Per ranged candidate column: values, and the index of the one to refuse (None: none)."""
    cases: list[tuple[str, list[Any], int | None]] = []
    for column in RANGED:
        low = float(column.low if column.low is not None else -1e9)
        high = float(column.high if column.high is not None else 1e12)
        good = [low, (low + high) / 2, high]
        cases.append((column.name, good, None))
        bad = [math.nan, math.inf, -math.inf, low - 1.0]
        if column.high is not None:
            bad.append(high + 1.0)
        cases += [(column.name, [*good, value], 3) for value in bad]
        cases.append((column.name, [*good, None], None if column.nullable else 3))
        cases.append((column.name, [low, 2, True], None))  # numbers of other types: as before
    return cases


@pytest.mark.parametrize("name, values, refused", _ranged_cases())
def test_ranged_candidate_columns_refuse_exactly_the_values_out_of_range(
    name: str, values: list[Any], refused: int | None
) -> None:
    """Finite numbers within the column's range pass, whatever path checks them (all floats:
    the quick one); NaN, infinities, values outside the range, and nulls where the column
    takes none are refused, naming the value's index."""

    def at(column: str, i: int) -> str:
        return f"candidates.{column}[{i}]"

    if refused is None:
        check_ranged({name: values}, at)
        return
    with pytest.raises(InvalidArgument) as info:
        check_ranged({name: values}, at)
    assert info.value.field == f"candidates.{name}[{refused}]"
