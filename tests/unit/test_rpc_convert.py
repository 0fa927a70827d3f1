"""Wire conversion: both candidate encodings give the decisions of the JSON golden requests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from admatch.v1 import admatch_pb2 as pb
from engine.errors import InvalidArgument
from engine.rpc.convert import (
    decision_message,
    decision_to_proto,
    decision_to_wire,
    request_to_proto,
)
from engine.rpc.decode import decode_request
from engine.scoring.jsonio import request_from_json
from engine.scoring.scorer import Scorer

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
CASES = sorted(p for p in GOLDEN.glob("*/*.json") if p.parent.name != "error")


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columns"])
def test_wire_requests_decide_like_json(scorer: Scorer, path: Path, columnar: bool) -> None:
    direct = request_from_json(json.loads(path.read_text())["request"])
    wire = pb.ScoreRequest.FromString(request_to_proto(direct, columnar).SerializeToString())
    # exposures are not on the wire (the server reads them from the cap store): hand them over
    via_wire = dataclasses.replace(decode_request(wire), exposures=direct.exposures)
    a, b = scorer.score(direct), scorer.score(via_wire)
    assert a.selected == b.selected and a.reason == b.reason
    np.testing.assert_allclose(a.utility, b.utility, rtol=0, atol=1e-12)
    resp = pb.ScoreResponse.FromString(decision_to_proto(b).SerializeToString())
    assert list(resp.selected_ad_ids) == b.selected
    assert [d.ad_id for d in resp.decisions] == b.ad_id
    assert resp.decisions[0].score.utility == pytest.approx(float(b.utility[0]))
    assert {pb.Reason.Name(d.reason) for d in resp.decisions} <= {f"REASON_{r}" for r in b.reason}


def base() -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    return request_to_proto(request_from_json(doc))


def edit(fn) -> pb.ScoreRequest:
    msg = base()
    fn(msg)
    return msg


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: edit(lambda m: m.ClearField("request_id")), "request_id"),
        (lambda: edit(lambda m: m.ClearField("time")), "time"),
        (lambda: edit(lambda m: setattr(m, "touchpoint", 0)), "touchpoint"),
        (lambda: edit(lambda m: setattr(m, "slot", 99)), "slot"),
        (lambda: edit(lambda m: m.ClearField("candidates")), "candidates"),
        (
            lambda: edit(lambda m: setattr(m.candidates.items[2], "format", 0)),
            "candidates.items[2].format",
        ),
        (
            lambda: edit(
                lambda m: m.campaign_caps.add(campaign_id="c", scope=1, window="3 weeks", limit=1)
            ),
            "campaign_caps[0].window",
        ),
        (lambda: edit(lambda m: setattr(m.pod, "max_ads", 0)), "pod.max_ads"),
    ],
    ids=[
        "request-id",
        "time",
        "touchpoint",
        "slot",
        "no-candidates",
        "format",
        "campaign-cap",
        "pod",
    ],
)
def test_bad_wire_requests_name_the_field(build, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_request(build())
    assert info.value.field == field


def _set(msg: pb.ScoreRequest, name: str, i: int, value: Any) -> None:
    """Candidate ``i``'s attribute ``name`` in whichever encoding ``msg`` has."""
    if msg.WhichOneof("candidate_encoding") == "candidate_columns":
        getattr(msg.candidate_columns, name)[i] = value
    else:
        setattr(msg.candidates.items[i], name, value)


def _first_ad(msg: pb.ScoreRequest) -> str:
    if msg.WhichOneof("candidate_encoding") == "candidate_columns":
        return str(msg.candidate_columns.ad_id[0])
    return str(msg.candidates.items[0].ad_id)


@pytest.mark.parametrize(
    ("change", "rows", "columns"),
    [
        (lambda m: _set(m, "bid", 1, -1.0), "candidates.items[1].bid", "candidate_columns.bid[1]"),
        (
            lambda m: _set(m, "duration_s", 2, 4000.0),
            "candidates.items[2].duration_s",
            "candidate_columns.duration_s[2]",
        ),
        (
            lambda m: _set(m, "ad_id", 1, ""),
            "candidates.items[1].ad_id",
            "candidate_columns.ad_id[1]",
        ),
        (
            lambda m: _set(m, "ad_id", 1, _first_ad(m)),
            "candidates.items[1].ad_id",
            "candidate_columns.ad_id[1]",
        ),
        (lambda m: setattr(m, "local_hour", 30), "local_hour", "local_hour"),
        (lambda m: setattr(m, "slot", pb.SLOT_MOBILE_FEED), "slot", "slot"),
        (
            lambda m: m.pod.MergeFrom(pb.Pod(max_ads=2, max_total_duration_s=float("nan"))),
            "pod.max_total_duration_s",
            "pod.max_total_duration_s",
        ),
    ],
    ids=["bid", "duration", "empty-ad-id", "duplicate-ad-id", "local-hour", "slot", "pod-total"],
)
@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columns"])
def test_what_validation_refuses_is_named_by_the_message_path(
    change: Any, rows: str, columns: str, columnar: bool
) -> None:
    """``ScoreRequest.validate`` names the core's fields (``request.candidates[1].bid``);
    a wire request's error names the field of the message the client sent, found when it is
    decoded (the core takes the decoded request as valid)."""
    msg = request_to_proto(decode_request(base()), columnar=columnar)
    change(msg)
    with pytest.raises(InvalidArgument) as info:
        decode_request(msg)
    assert info.value.field == (columns if columnar else rows)


def test_columnar_columns_must_line_up() -> None:
    msg = request_to_proto(decode_request(base()), columnar=True)
    msg.candidate_columns.bid.pop()
    with pytest.raises(InvalidArgument) as info:
        decode_request(msg)
    assert info.value.field == "candidate_columns.bid"
    msg = request_to_proto(decode_request(base()), columnar=True)
    del msg.candidate_columns.category[:]  # an optional column may be left out entirely
    assert "category" not in decode_request(msg).candidates


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_written_responses_equal_built_messages(scorer: Scorer, path: Path) -> None:
    decision = scorer.score(request_from_json(json.loads(path.read_text())["request"]))
    fast = decision_to_proto(decision)
    assert fast == decision_message(decision)
    assert fast.SerializeToString() == decision_message(decision).SerializeToString()
    # what the server sends (zeros written out: other bytes, the same message)
    assert pb.ScoreResponse.FromString(decision_to_wire(decision)) == fast


@pytest.mark.parametrize(
    "change",
    [
        lambda d: {"ad_id": [f"é{i}" * 20 for i in range(len(d.ad_id))]},  # 2-byte varint lengths
        lambda d: {"ad_id": ["x" * 200 + str(i) for i in range(len(d.ad_id))]},  # message path
        lambda d: {"rank": np.arange(200, 200 + len(d.ad_id))},  # message path
        lambda d: {"request_id": "", "model_version": "", "selected": []},
        lambda d: {"p_engage": -d.p_engage, "utility": np.full(len(d.ad_id), np.nan)},
        lambda d: {"cap_store_ok": False},  # the store did not answer for it
    ],
    ids=["unicode-ids", "long-ids", "large-ranks", "empty-strings", "signs-and-nan", "no-store"],
)
def test_written_responses_cover_edge_values(scorer: Scorer, change: Any) -> None:
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    decision = scorer.score(request_from_json(doc))
    edited = dataclasses.replace(decision, **change(decision))
    fast, built = decision_to_proto(edited), decision_message(edited)
    assert fast.SerializeToString() == built.SerializeToString()  # NaN != NaN: compare bytes
    sent = pb.ScoreResponse.FromString(decision_to_wire(edited))
    assert sent.SerializeToString() == built.SerializeToString()
