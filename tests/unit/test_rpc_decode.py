"""Decoding what clients send: every error names the field as sent, the value (cut) and the rule;
every repeated field and string has a bound, refused with its size (issue 16, items 6 and 10)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from admatch.v1 import admatch_pb2 as pb
from engine.errors import InvalidArgument
from engine.rpc.convert import request_to_proto
from engine.rpc.decode import decode_events, decode_request
from engine.rpc.limits import DEFAULT_LIMITS, Limits
from engine.scoring.jsonio import request_from_json

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
NOW = datetime(2026, 3, 3, 12, 30, tzinfo=UTC)


def base(columnar: bool = False) -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    return request_to_proto(request_from_json(doc), columnar)


def refused(msg: pb.ScoreRequest, limits: Limits = DEFAULT_LIMITS) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        decode_request(pb.ScoreRequest.FromString(msg.SerializeToString()), limits)
    return info.value


def cap(**kw: Any) -> pb.CampaignCap:
    fields = {"campaign_id": "c1", "scope": pb.CAP_SCOPE_USER, "window": "24h", "limit": 3}
    return pb.CampaignCap(**{**fields, **kw})


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            lambda m: m.campaign_caps.append(cap(limit=0)),
            "campaign_caps[0].limit",
            "must be 1 to 1,000,000, got 0",
        ),
        (
            lambda m: m.campaign_caps.append(cap(window="1y")),
            "campaign_caps[0].window",
            "'1y' is not a duration like 90m, 24h or 30d (at most 180d), or lifetime",
        ),
        (
            lambda m: m.campaign_caps.append(cap(window="200d")),
            "campaign_caps[0].window",
            "'200d' is longer than 180d; use lifetime",
        ),
        (
            lambda m: m.campaign_caps.append(cap(campaign_id="")),
            "campaign_caps[0].campaign_id",
            "required",
        ),
        (
            lambda m: m.campaign_caps.append(cap(scope=7)),
            "campaign_caps[0].scope",
            "unknown value 7",
        ),
        (
            lambda m: setattr(m.candidates.items[3], "ad_id", m.candidates.items[1].ad_id),
            "candidates.items[3].ad_id",
            "'pre_food_x' is given twice (first at candidates.items[1].ad_id)",
        ),
        (
            lambda m: setattr(m.time, "nanos", -5),
            "time.nanos",
            "must be 0 to 999,999,999, got -5",
        ),
        (
            lambda m: setattr(m.time, "nanos", 1_000_000_000),
            "time.nanos",
            "must be 0 to 999,999,999, got 1,000,000,000",
        ),
        (lambda m: setattr(m.pod, "max_ads", 50), "pod.max_ads", "must be an integer 1 to 10"),
        (
            lambda m: m.pod.MergeFrom(pb.Pod(max_ads=2, max_total_duration_s=1e9)),
            "pod.max_total_duration_s",
            "must be a number 0 to 3600, got 1000000000.0",
        ),
        (
            lambda m: setattr(m, "slot", pb.SLOT_MOBILE_FEED),
            "slot",
            "SLOT_MOBILE_FEED is not a slot of ott",
        ),
        (lambda m: setattr(m.candidates.items[0], "bid", -1.0), "candidates.items[0].bid", "-1.0"),
        (
            lambda m: m.candidates.items[1].excluded_content.extend(["news", "x" * 129]),
            "candidates.items[1].excluded_content[1]",
            "at most 128",
        ),
        (
            lambda m: m.blocked_attributes.extend([6, 18]),
            "blocked_attributes[1]",
            "must be an OpenRTB creative attribute 1-17, got 18",
        ),
        (
            lambda m: setattr(m.candidates.items[2], "creative_attributes", 1 << 17),
            "candidates.items[2].creative_attributes",
            "must be in [0, 131071], got 131072",
        ),
    ],
    ids=[
        "cap-limit-0",
        "cap-window-1y",
        "cap-window-200d",
        "cap-campaign",
        "cap-scope",
        "duplicate-ad",
        "nanos-negative",
        "nanos-too-big",
        "pod-50-ads",
        "pod-total",
        "slot-of-another-touchpoint",
        "bid",
        "exclusion-too-long",
        "battr-unknown",
        "attr-mask-too-big",
    ],
)
def test_an_error_names_the_field_the_value_and_the_rule(
    change: Any, field: str, message: str
) -> None:
    """Before: the validator's boilerplate ("campaign_caps[0]:     For further information
    visit https://errors.pydantic.dev/..."), no index for a duplicate, protobuf's nanos range
    [0, 999999], and pod.max_ads = 50 accepted."""
    msg = base()
    change(msg)
    error = refused(msg)
    assert error.field == field
    assert message in error.problem, error.problem
    assert "pydantic" not in str(error) and "further information" not in str(error)


def test_a_string_over_its_bound_is_refused_with_its_size_and_a_cut_value() -> None:
    """Before: a 3 MiB user_id was accepted and its impressions reserved."""
    msg = base()
    msg.user.user_id = "u" * (3 * 1024 * 1024)
    error = refused(msg)
    assert error.field == "user.user_id"
    assert error.problem.startswith("3,145,728 characters ('uuuuuuu")
    assert error.problem.endswith("...), at most 128 (server.max_string_chars)")
    assert len(str(error)) < 200  # the value is cut, not sent back whole


@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columns"])
def test_a_candidate_string_over_its_bound_names_its_candidate(columnar: bool) -> None:
    """Before: an over-long campaign_id gave no candidate path (the store's 64 KiB limit
    named only the column)."""
    msg = base(columnar)
    if columnar:
        msg.candidate_columns.campaign_id[2] = "c" * 300
    else:
        msg.candidates.items[2].campaign_id = "c" * 300
    error = refused(msg)
    where = "candidate_columns.campaign_id[2]" if columnar else "candidates.items[2].campaign_id"
    assert error.field == where
    assert "300 characters" in error.problem and "at most 128" in error.problem


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (
            lambda m: m.campaign_caps.extend([cap(campaign_id=f"c{i}") for i in range(100_000)]),
            "campaign_caps",
            "100,000 entries, at most 256 (server.max_campaign_caps)",
        ),
        (
            lambda m: m.user.interests.extend([f"t{i}" for i in range(65 - len(m.user.interests))]),
            "user.interests",
            "65 entries, at most 64 (server.max_interests)",
        ),
        (
            lambda m: m.user.interests.append("x" * 129),
            "user.interests[3]",
            "129 characters",
        ),
        (
            lambda m: [m.candidates.items.add(ad_id=f"more{i}") for i in range(996)],
            "candidates.items",
            "1,001 entries, at most 1,000 (server.max_candidates)",
        ),
        (lambda m: setattr(m, "request_id", "r" * 200), "request_id", "200 characters"),
        (
            lambda m: m.blocked_categories.extend([f"c{i}" for i in range(257)]),
            "blocked_categories",
            "257 entries, at most 256 (server.max_blocked)",
        ),
        (
            lambda m: m.blocked_advertisers.extend(["ok", "a" * 129]),
            "blocked_advertisers[1]",
            "129 characters",
        ),
    ],
    ids=[
        "campaign-caps",
        "interests",
        "interest-tag",
        "candidates",
        "request-id",
        "blocked-categories",
        "blocked-advertiser",
    ],
)
def test_repeated_fields_have_bounds(change: Any, field: str, problem: str) -> None:
    """Before: 100,000 campaign_caps (1.7 MiB) were accepted and took 3.2 s to decide."""
    msg = base()
    change(msg)
    error = refused(msg)
    assert (error.field, problem in error.problem) == (field, True), error


def test_bounds_come_from_the_config() -> None:
    msg = base()
    msg.campaign_caps.extend([cap(campaign_id=f"c{i}") for i in range(300)])
    assert refused(msg).field == "campaign_caps"
    roomy = Limits(campaign_caps=1000)
    assert len(decode_request(msg, roomy).campaign_caps or {}) == 300


def impression(**kw: Any) -> pb.Event:
    fields: dict[str, Any] = {
        "type": pb.Event.TYPE_IMPRESSION,
        "impression_id": "i1",
        "user_id": "u1",
        "touchpoint": pb.TOUCHPOINT_OTT,
        "slot": pb.SLOT_OTT_PAUSE,
        "ad_id": "a1",
    }
    e = pb.Event(**{**fields, **kw})
    e.time.FromDatetime(NOW)
    return e


@pytest.mark.parametrize(
    ("events", "field", "problem"),
    [
        (
            [impression(), impression(impression_id="i2", slot=pb.SLOT_MOBILE_FEED)],
            "events[1].slot",
            "SLOT_MOBILE_FEED is not a slot of ott",
        ),
        ([impression(user_id="u" * 500)], "events[0].user_id", "500 characters"),
        ([impression(ad_id="")], "events[0].ad_id", "required"),
        ([impression(type=9)], "events[0].type", "unknown value 9"),
        (
            [impression(type=pb.Event.TYPE_NEGATIVE_FEEDBACK)],
            "events[0].negative_kind",
            "required",
        ),
    ],
    ids=["slot-of-another-touchpoint", "long-id", "no-ad", "unknown-type", "no-kind"],
)
def test_events_are_held_to_the_rules_of_score(
    events: list[pb.Event], field: str, problem: str
) -> None:
    """Before: RecordEvents accepted an impression on a touchpoint/slot pair Score refuses."""
    with pytest.raises(InvalidArgument) as info:
        decode_events(pb.EventBatch(events=events), NOW, 300)
    assert info.value.field == field and problem in info.value.problem, info.value


def test_an_event_batch_has_a_bound() -> None:
    batch = pb.EventBatch(events=[impression(impression_id=f"i{k}") for k in range(11)])
    with pytest.raises(InvalidArgument) as info:
        decode_events(batch, NOW, 300, Limits(events=10))
    assert str(info.value) == "events: 11 entries, at most 10 (server.max_events)"
    impressions, feedback, records = decode_events(batch, NOW, 300, Limits(events=11))
    assert len(impressions) == 11 and feedback == [] and len(records) == 11
    assert records[0].event_id == "impression:i0" and records[0].type == "impression"


@pytest.mark.parametrize(
    "name", ["edge/campaign_content_exclusions.json", "edge/request_blocked_attributes.json"]
)
def test_both_encodings_carry_the_list_and_bitmask_attributes(name: str) -> None:
    """A candidate's content exclusions (a list each) and creative attributes (a bitmask),
    the request's content categories and blocked attributes: the same in both encodings."""
    want = request_from_json(json.loads((GOLDEN / name).read_text())["request"])
    for columnar in (False, True):
        got = decode_request(request_to_proto(want, columnar))
        assert got.context == want.context
        n = len(want.candidates["ad_id"])
        for column in ("excluded_content", "creative_attributes"):
            values = [list(r.candidates.get(column) or [None] * n) for r in (got, want)]
            assert values[0] == values[1], (column, columnar)  # an absent column: all null


@pytest.mark.parametrize("columnar", [False, True])
def test_unknown_values_decode_as_none_whatever_their_mix(columnar: bool) -> None:
    """An empty string or a zero duration means unknown (None) in a column where every value
    is known, none is, or some are: the same in both encodings."""
    msg = base(columnar)
    n = len(decode_request(msg).candidates["ad_id"])
    mixes = {
        "category": [""] * n,
        "creative_id": [f"k{i}" for i in range(n)],
        "advertiser_id": ["", *(f"v{i}" for i in range(1, n))],
        "duration_s": [0, *range(15, 15 + n - 1)],
    }
    for name, values in mixes.items():
        if columnar:
            del getattr(msg.candidate_columns, name)[:]
            getattr(msg.candidate_columns, name).extend(values)
        else:
            for item, value in zip(msg.candidates.items, values, strict=True):
                setattr(item, name, value)
    got = decode_request(pb.ScoreRequest.FromString(msg.SerializeToString())).candidates
    assert got.get("category") in (None, [None] * n)  # an empty column: absent or all None
    assert got["creative_id"] == mixes["creative_id"]
    assert got["advertiser_id"] == [None, *mixes["advertiser_id"][1:]]
    assert got["duration_s"] == [None, *mixes["duration_s"][1:]]
