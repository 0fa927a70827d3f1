"""Issue 20, item 1: no restricted category ever reaches a minor, a place where a child may be
present, or a shared screen whose audience is unknown, whatever the bids, weights, reserve and
exploration (property-based)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import COST_COMPONENTS, load_config
from engine.errors import ConfigError
from engine.model.bundle import ModelBundle
from engine.scoring.scorer import Scorer
from engine.scoring.types import CODE, Reason, ScoreRequest, attribute_mask
from features.online import RequestContext
from features.schema import (
    AGE_BANDS,
    ASSISTANT_STATES,
    AUDIENCES,
    FORMATS,
    RATINGS,
    SCENES,
    SLOT_TOUCHPOINT,
)

RESTRICTED = ("alcohol", "gambling", "tobacco", "dating")
OTHER = ("food", "music", "travel", "kids")
BLOCKS = {
    CODE[Reason.BLOCKED_CATEGORY],
    CODE[Reason.BLOCKED_ADVERTISER],
    CODE[Reason.BLOCKED_ATTRIBUTE],
    CODE[Reason.CONTENT_EXCLUDED],
}
CONTENT = ("news", "sports", "horror", "kids_tv")
DOMAINS = (None, "ford.com", "www.ford.com", "Shop.FORD.com", "notford.com", "a.b.ford.co.uk")
PROTECTION = {
    CODE[r] for r in (Reason.AGE_RESTRICTED, Reason.CHILD_PRESENT, Reason.AUDIENCE_UNKNOWN)
}

candidate = st.fixed_dictionaries(
    {
        "category": st.sampled_from(RESTRICTED + OTHER + (None,)),
        "bid": st.floats(0, 500),
        "format": st.sampled_from(FORMATS),
        "tier": st.sampled_from((*RATINGS, None)),
        "duration": st.sampled_from((None, 5.0, 15.0, 30.0)),
        "attrs": st.lists(st.integers(1, 17), max_size=3),  # OpenRTB creative attributes
        "excluded": st.lists(st.sampled_from(CONTENT), max_size=2),  # the campaign's
        "domain": st.sampled_from(DOMAINS),  # OpenRTB adomain
    }
)
request = st.fixed_dictionaries(
    {
        "slot": st.sampled_from(sorted(SLOT_TOUCHPOINT)),
        "age": st.sampled_from((*AGE_BANDS, None)),
        "scene": st.sampled_from((*SCENES, None)),
        "rating": st.sampled_from((*RATINGS, None)),
        "audience": st.sampled_from((*AUDIENCES, None)),
        "state": st.sampled_from((*ASSISTANT_STATES, None)),
        "bcat": st.lists(st.sampled_from(RESTRICTED + OTHER), max_size=3),
        "badv": st.lists(
            st.sampled_from([f"a{i}" for i in range(8)] + ["ford.com", "FORD.co.uk", "com"]),
            max_size=3,
        ),
        "battr": st.lists(st.integers(1, 17), max_size=4),
        "content": st.lists(st.sampled_from(CONTENT), max_size=2),
        "hour": st.integers(0, 23),
        "candidates": st.lists(candidate, min_size=1, max_size=8),
    }
)
tuning = st.fixed_dictionaries(
    {
        "weights": st.lists(
            st.floats(0, 4), min_size=len(COST_COMPONENTS), max_size=len(COST_COMPONENTS)
        ),
        "cost_to_money": st.floats(0, 0.05),
        "reserve": st.floats(-1, 0.02),
        "share": st.floats(0, 0.5),
        "seed": st.integers(0, 1000),
    }
)


def _domain_blocked(domain: str | None, badv: list[str]) -> bool:
    """OpenRTB badv by domain: the domain or one above it is listed, in any case."""
    d = (domain or "").lower()
    return bool(d) and any(d == e.lower() or d.endswith("." + e.lower()) for e in badv)


def _scorer(bundle: ModelBundle, t: dict[str, Any]) -> Scorer:
    base = load_config()
    scoring = base.scoring.model_copy(
        update={
            "weights": base.scoring.weights.model_copy(
                update=dict(zip(COST_COMPONENTS, t["weights"], strict=True))
            ),
            "cost_to_money": t["cost_to_money"],
            "reserve": t["reserve"],
        }
    )
    exploration = base.exploration.model_copy(update={"share": t["share"], "seed": t["seed"]})
    return Scorer(bundle, base.model_copy(update={"scoring": scoring, "exploration": exploration}))


def _request(r: dict[str, Any], k: int) -> ScoreRequest:
    slot = r["slot"]
    ctx = RequestContext(
        request_id=f"p{k}",
        ts=datetime(2026, 3, 3, 12, tzinfo=UTC),
        user_id="u1",
        touchpoint=SLOT_TOUCHPOINT[slot],
        slot=slot,
        household_id="h1",
        device_id="d1",
        scene=r["scene"],
        local_hour=r["hour"],
        user_interests=("food", "alcohol"),
        age_band=r["age"],
        activity_level=None,
        content_rating=r["rating"],
        audience=r.get("audience"),
        assistant_state=r.get("state"),
        blocked_categories=tuple(r.get("bcat", ())),
        blocked_advertisers=tuple(r.get("badv", ())),
        blocked_attributes=attribute_mask(r.get("battr", []), "battr") or None,
        content_categories=tuple(r.get("content", ())),
    )
    cands = r["candidates"]
    columns = {
        "ad_id": [f"ad{i}" for i in range(len(cands))],
        "campaign_id": [f"c{i}" for i in range(len(cands))],
        "advertiser_id": [f"a{i}" for i in range(len(cands))],
        "category": [c["category"] for c in cands],
        "bid": [c["bid"] for c in cands],
        "pricing": ["cpm"] * len(cands),
        "format": [c["format"] for c in cands],
        "suitability_tier": [c["tier"] for c in cands],
        "duration_s": [c["duration"] for c in cands],
        "creative_attributes": [attribute_mask(c.get("attrs", []), "attr") or None for c in cands],
        "excluded_content": [list(c.get("excluded", [])) or None for c in cands],
        "advertiser_domain": [c.get("domain") for c in cands],
    }
    return ScoreRequest(ctx, columns)


@pytest.fixture(scope="module")
def bundle(model_dir: Any) -> ModelBundle:
    return ModelBundle.load(model_dir, runtime="lightgbm")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=6), t=tuning)
def test_no_restricted_category_reaches_the_protected(
    bundle: ModelBundle, requests: list[dict[str, Any]], t: dict[str, Any]
) -> None:
    scorer = _scorer(bundle, t)
    batch = [_request(r, k) for k, r in enumerate(requests)]
    for r, req, d in zip(requests, batch, scorer.score_batch(batch), strict=True):
        restricted = np.array([c["category"] in RESTRICTED for c in r["candidates"]])
        child = r["scene"] == "family" or r["rating"] == "kids" or r["audience"] == "child_present"
        shared = req.context.touchpoint in ("ott", "iot") and r["audience"] != "adults_only"
        protected = r["age"] == "under_18" or child or shared
        selected = d.rank > 0
        if protected:
            assert not (selected & restricted).any(), (r, d.reason)
            assert set(d.reason_code[restricted].tolist()) <= PROTECTION
            assert not (d.propensity[restricted] > 0).any()  # exploration never shows them
        assert not set(d.reason_code[~restricted].tolist()) & PROTECTION
        cats = [c["category"] for c in r["candidates"]]
        listed = np.array(
            [
                cats[i] in r["bcat"]
                or f"a{i}" in r["badv"]
                or _domain_blocked(c.get("domain"), r["badv"])
                or bool(set(c.get("attrs", [])) & set(r.get("battr", [])))
                or bool(set(c.get("excluded", [])) & set(r.get("content", [])))
                for i, c in enumerate(r["candidates"])
            ],
            dtype=bool,
        )
        assert not (selected & listed).any()  # nothing blocked or excluded, ever
        assert not (d.propensity[listed] > 0).any()
        assert set(d.reason_code[listed & ~restricted].tolist()) <= BLOCKS
        if r["slot"].startswith("voice") and r["state"] in ("in_dialogue", "task_running"):
            assert not selected.any()  # the assistant is busy: no ad, whatever it would earn
        if r["slot"].startswith("voice") and r["state"] == "task_completed":
            limit = {"voice_reply": 10.0, "voice_break": 15.0}[r["slot"]]
            lengths = [c["duration"] or 0.0 for c in r["candidates"]]
            assert all(lengths[i] <= limit for i in np.flatnonzero(selected))


def test_protections_follow_the_config(bundle: ModelBundle) -> None:
    r = {
        "slot": "ott_home_banner",
        "age": "35_44",
        "scene": "personal",
        "rating": "mature",
        "hour": 20,
        "candidates": [
            {
                "category": "alcohol",
                "bid": 80.0,
                "format": "image",
                "tier": "mature",
                "duration": None,
            }
        ],
    }
    base = load_config()
    assert Scorer(bundle, base).score(_request(r, 0)).reason[0] == Reason.AUDIENCE_UNKNOWN
    adults = {**r, "audience": "adults_only"}
    assert Scorer(bundle, base).score(_request(adults, 0)).reason[0] == Reason.SELECTED
    child = {**r, "slot": "mobile_feed", "audience": "child_present"}
    assert Scorer(bundle, base).score(_request(child, 0)).reason[0] == Reason.CHILD_PRESENT
    off = base.protections.model_copy(update={"unknown_audience_on_shared_screens": False})
    shown = Scorer(bundle, base.model_copy(update={"protections": off})).score(_request(r, 0))
    assert shown.reason[0] == Reason.SELECTED
    none = base.protections.model_copy(update={"restricted_categories": ["tobacco"]})
    minor = {**r, "slot": "mobile_feed", "age": "under_18"}
    assert (
        Scorer(bundle, base.model_copy(update={"protections": none}))
        .score(_request(minor, 0))
        .reason[0]
        == Reason.SELECTED
    )


def test_the_protections_config_is_checked(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    text = (Path(__file__).parents[2] / "engine" / "default_config.toml").read_text()
    path.write_text(text.replace('shared_screens = ["ott", "iot"]', 'shared_screens = ["tv"]'))
    with pytest.raises(ConfigError, match="unknown touchpoints"):
        load_config(path)


def test_assistant_states_in_the_config_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    text = (Path(__file__).parents[2] / "engine" / "default_config.toml").read_text()
    path.write_text(
        text.replace(
            'assistant_states = ["idle", "task_completed"]', 'assistant_states = ["asleep"]', 1
        )
    )
    with pytest.raises(ConfigError, match="unknown assistant states"):
        load_config(path)


def test_the_config_blocks_creative_attributes_per_place(bundle: ModelBundle) -> None:
    """Shipped: no auto-playing audio, pop-up or flashing creative on the TV's power-on screen
    and screensaver or on IoT screens (protections.blocked_attributes); elsewhere they compete."""
    scorer = Scorer(bundle, load_config())
    cands = [
        {
            "category": "food",
            "bid": 90.0,
            "format": "image",
            "tier": None,
            "duration": 10.0,
            "attrs": [1],
        },
        {
            "category": "music",
            "bid": 80.0,
            "format": "image",
            "tier": None,
            "duration": 10.0,
            "attrs": [10, 16],
        },
        {
            "category": "travel",
            "bid": 5.0,
            "format": "image",
            "tier": None,
            "duration": 10.0,
            "attrs": [16],
        },
    ]
    base = {"age": "35_44", "scene": "personal", "rating": "general", "hour": 12}
    places = (("ott_screensaver", True), ("iot_idle_screen", True), ("mobile_feed", False))
    for slot, refused in places:
        d = scorer.score(_request({**base, "slot": slot, "candidates": cands}, 0))
        blocked = [r == Reason.BLOCKED_ATTRIBUTE for r in d.reason]
        assert blocked == [refused, refused, False], (slot, d.reason)


def test_a_request_blocks_advertisers_by_domain(bundle: ModelBundle) -> None:
    """OpenRTB badv lists domains: ``ford.com`` blocks the advertiser whose domain is it or
    under it, in any case, and not ``notford.com``; an advertiser id still blocks as before."""
    scorer = Scorer(bundle, load_config())
    domains = ["ford.com", "WWW.Ford.com", "notford.com", None, None]
    cands = [
        {"category": "food", "bid": 50.0, "format": "image", "tier": None, "duration": 10.0}
        | {"domain": d}
        for d in domains
    ]
    r = {"age": "35_44", "scene": "personal", "rating": "general", "hour": 12}
    r |= {"slot": "mobile_feed", "candidates": cands, "badv": ["ford.com", "a3"]}
    d = scorer.score(_request(r, 0))
    blocked = [x == Reason.BLOCKED_ADVERTISER for x in d.reason]
    assert blocked == [True, True, False, True, False], d.reason


def test_a_pass_decides_each_request_as_alone_whatever_columns_the_others_send(
    bundle: ModelBundle,
) -> None:
    """A candidate column one request of a pass sends and another does not (a domain, content
    exclusions, creative attributes) keeps its values: before, the whole pass's column was
    empty, so a batched request lost its block lists' targets (badv by domain, battr, content
    exclusions) depending on who shared its pass."""
    scorer = Scorer(bundle, load_config())
    cands = [
        {"category": "food", "bid": 60.0, "format": "image", "tier": None, "duration": 10.0}
        | {"domain": "www.ford.com", "attrs": [1], "excluded": ["news"]},
        {"category": "food", "bid": 5.0, "format": "image", "tier": None, "duration": 10.0},
    ]
    base = {"age": "35_44", "scene": "personal", "rating": "general", "hour": 12}
    sends = _request({**base, "slot": "mobile_feed", "candidates": cands, "badv": ["ford.com"]}, 0)
    plain = {**base, "slot": "mobile_feed", "candidates": cands[1:]}
    silent = _request(plain, 1)
    silent = dataclasses.replace(
        silent,
        candidates={
            k: v
            for k, v in silent.candidates.items()
            if k not in ("advertiser_domain", "creative_attributes", "excluded_content")
        },
    )
    alone = [scorer.score(r) for r in (sends, silent)]
    together = scorer.score_batch([sends, silent])
    assert alone[0].reason[0] == Reason.BLOCKED_ADVERTISER
    for a, b in zip(alone, together, strict=True):
        assert a.selected == b.selected and list(a.reason) == list(b.reason)
