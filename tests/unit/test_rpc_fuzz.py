"""Whatever a client sends, the service answers or refuses it with INVALID_ARGUMENT naming the
field: no request or event batch, however malformed, may end as INTERNAL (a server fault).

Property-based: hypothesis edits a valid golden request (or event batch) field by field with
values a client can put on the wire (any int32 for enums, any double, any string, timestamps
out of range, columns of unequal length...) and the servicer handles it in process.
``ADMATCH_FUZZ_EXAMPLES`` sets the examples per property (default 300; run more by hand).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from admatch.v1 import admatch_pb2 as pb
from engine.app import App, build_app
from engine.caps.store import StoreUnavailable
from engine.config import load_config
from engine.errors import AdmatchError, InvalidArgument
from engine.rpc.convert import request_to_proto
from engine.rpc.decode import decode_request
from engine.rpc.metrics import Metrics
from engine.rpc.service import AdMatchingServicer
from engine.scoring.jsonio import request_from_json

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
EXAMPLES = int(os.environ.get("ADMATCH_FUZZ_EXAMPLES", "300"))
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.one_of(st.integers(0, 2**17), st.integers(0, 2**32 - 1))  # bitmasks, in and past
ENUM = st.one_of(st.integers(-3, 40), INT32)  # in and around each enum's range, and anything
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # no lone surrogates
ID = st.one_of(st.sampled_from(["", "a", "x:{y}", "%", "é", " ", "z" * 70_000]), TEXT)
DOUBLE = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SECONDS = st.one_of(
    st.integers(-62_135_596_800, 253_402_300_799),  # what Timestamp allows
    st.sampled_from([0, -1, 1_767_225_600, 253_402_300_799, -62_135_596_800]),
    INT64,
)
NANOS = st.one_of(st.integers(0, 999_999_999), INT32)
WINDOW = st.one_of(
    st.sampled_from(["90m", "24h", "30d", "180d", "181d", "lifetime", "0m", "-1d", "", "1y"]),
    TEXT,
)


class _Context:
    """What the servicer reads of a gRPC context: no client deadline."""

    def time_remaining(self) -> float | None:
        return None


@pytest.fixture(scope="module", params=["memory://", ""], ids=["memory", "embedded-redis"])
def app(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[App]:
    """The app on the in-memory store and on a real Redis (the embedded one: a private server
    the fixture's close stops), whose scripts get every odd id and time too."""
    config = load_config()
    store = config.store.model_copy(update={"url": request.param, "deadline_ms": 5000})
    application = build_app(config.model_copy(update={"store": store}), model_dir)
    yield application
    application.close()


@pytest.fixture(scope="module")
def servicer(app: App) -> AdMatchingServicer:
    server = app.scorer.config.server.model_copy(update={"max_candidates": 8})
    return AdMatchingServicer(app, server, Metrics())


def _golden(name: str) -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / name).read_text())["request"]
    return request_to_proto(request_from_json(doc))


BASES = [_golden("exemplary/ott_preroll_pod.json"), _golden("exemplary/voice_break_morning.json")]


_COLUMNS = [f.name for f in pb.CandidateColumns.DESCRIPTOR.fields]
_VALUES: dict[str, st.SearchStrategy[Any]] = {"format": ENUM, "pricing": ENUM}
_VALUES |= {"suitability_tier": ENUM, "duration_s": DOUBLE, "bid": DOUBLE}
_VALUES |= {"creative_attributes": UINT32}


def _edit_candidates(data: st.DataObject, msg: pb.ScoreRequest) -> None:
    """Odd values in some candidates, a duplicated ad, fewer candidates, and maybe the
    columnar encoding with some columns cut short."""
    items = msg.candidates.items
    for _ in range(data.draw(st.integers(0, 3), label="candidate edits")):
        if not len(items):
            break
        c = items[data.draw(st.integers(0, len(items) - 1), label="candidate")]
        name = data.draw(st.sampled_from(_COLUMNS), label="attribute")
        if name == "excluded_content":  # a list per candidate
            c.excluded_content.extend(data.draw(st.lists(ID, max_size=3), label=name))
        else:
            setattr(c, name, data.draw(_VALUES.get(name, ID), label=name))
    if len(items) and data.draw(st.booleans(), label="duplicate an ad"):
        items.add().CopyFrom(items[0])
    if data.draw(st.booleans(), label="drop candidates"):
        del items[data.draw(st.integers(0, len(items)), label="keep") :]
    if data.draw(st.booleans(), label="columnar"):
        rows = list(items)
        cols = msg.candidate_columns  # setting it clears the row encoding (a oneof)
        for name in _COLUMNS:
            if name == "excluded_content":
                cols.excluded_content.extend(pb.StringList(values=c.excluded_content) for c in rows)
            else:
                getattr(cols, name).extend(getattr(c, name) for c in rows)
        for name in data.draw(st.lists(st.sampled_from(_COLUMNS), max_size=3), label="cut"):
            column = getattr(cols, name)
            if len(column):
                column.pop()


def _edit_caps(data: st.DataObject, msg: pb.ScoreRequest) -> None:
    cap = msg.campaign_caps.add(campaign_id=data.draw(ID), window=data.draw(WINDOW))
    cap.limit = data.draw(INT32)
    setattr(cap, "scope", data.draw(ENUM))  # noqa: B010  # any int32, as on the wire


# a field set to any value a client can send: (the message holding it, its name, values)
_FIELDS: dict[str, tuple[Callable[[pb.ScoreRequest], Any], str, st.SearchStrategy[Any]]] = {
    "request_id": (lambda m: m, "request_id", ID),
    "user_id": (lambda m: m.user, "user_id", ID),
    "household_id": (lambda m: m, "household_id", ID),
    "device_id": (lambda m: m, "device_id", ID),
    "time.seconds": (lambda m: m.time, "seconds", SECONDS),
    "time.nanos": (lambda m: m.time, "nanos", NANOS),
    "touchpoint": (lambda m: m, "touchpoint", ENUM),
    "slot": (lambda m: m, "slot", ENUM),
    "scene": (lambda m: m, "scene", ENUM),
    "content_rating": (lambda m: m, "content_rating", ENUM),
    "age_band": (lambda m: m.user, "age_band", ENUM),
    "activity_level": (lambda m: m.user, "activity_level", ENUM),
    "local_hour": (lambda m: m, "local_hour", st.one_of(INT32, st.integers(-2, 25))),
    "pod.max_ads": (lambda m: m.pod, "max_ads", st.one_of(INT32, st.integers(-1, 5))),
    "pod.max_total_duration_s": (lambda m: m.pod, "max_total_duration_s", DOUBLE),
    "reserve_caps": (lambda m: m, "reserve_caps", st.booleans()),
    "explain": (lambda m: m, "explain", st.booleans()),
}
_EDITS: dict[str, Callable[[st.DataObject, pb.ScoreRequest], None]] = {
    "candidates": _edit_candidates,
    "campaign_caps": _edit_caps,
    "interests": lambda d, m: m.user.interests.extend(d.draw(st.lists(ID, max_size=3))),
    "battr": lambda d, m: m.blocked_attributes.extend(d.draw(st.lists(UINT32, max_size=3))),
    "content": lambda d, m: m.content_categories.extend(d.draw(st.lists(ID, max_size=3))),
    "no time": lambda d, m: m.ClearField("time"),
    "no candidates": lambda d, m: m.ClearField("candidates"),
}


def _edit(data: st.DataObject, msg: pb.ScoreRequest, name: str) -> None:
    if name in _EDITS:
        _EDITS[name](data, msg)
    else:
        owner, field, values = _FIELDS[name]
        setattr(owner(msg), field, data.draw(values, label=name))


def _assert_refused_well(exc: BaseException) -> None:
    assert isinstance(exc, AdmatchError), f"{type(exc).__name__}: {exc} (would be INTERNAL)"
    assert exc.status != "INTERNAL", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, InvalidArgument):
        assert exc.field and exc.problem, exc
        assert not exc.field.startswith("request."), f"the core's name, not the wire's: {exc}"
        event(f"refused: {exc.field.split('[')[0]}")
    else:
        event(f"refused: {exc.status}")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_score_request_is_answered_or_refused_by_field(
    servicer: AdMatchingServicer, data: st.DataObject
) -> None:
    msg = pb.ScoreRequest()
    msg.CopyFrom(data.draw(st.sampled_from(BASES), label="base"))
    names = sorted([*_FIELDS, *_EDITS])
    for name in data.draw(st.lists(st.sampled_from(names), max_size=4), label="edits"):
        _edit(data, msg, name)
    wire = pb.ScoreRequest.FromString(msg.SerializeToString())  # what the server receives
    try:
        reply = servicer.Score(wire, _Context())
    except Exception as exc:  # noqa: BLE001  # the property is about which exceptions
        _assert_refused_well(exc)
        return
    finally:  # the store answered every call: odd input is no store failure
        assert servicer.app.cap_errors == 0
    response = pb.ScoreResponse.FromString(reply)
    event("answered, ads" if response.selected_ad_ids else "answered, no ad")
    n = len(decode_request(wire).candidates["ad_id"])
    assert len(response.decisions) == n
    assert len(response.selected_ad_ids) <= n
    assert all(
        math.isfinite(d.score.utility) or d.reason != pb.REASON_SELECTED for d in response.decisions
    )


EVENT_TYPES = st.one_of(st.integers(0, 4), ENUM)


_EVENT_FIELDS: dict[str, st.SearchStrategy[Any]] = {"type": EVENT_TYPES, "negative_kind": ENUM}
_EVENT_FIELDS |= {"touchpoint": ENUM, "slot": ENUM}
_EVENT_FIELDS |= dict.fromkeys(
    ["impression_id", "user_id", "household_id", "device_id", "ad_id", "creative_id"], ID
)
_EVENT_FIELDS |= dict.fromkeys(["campaign_id", "advertiser_id", "category"], ID)


@st.composite
def events(draw: st.DrawFn) -> pb.Event:
    """A valid impression or negative feedback with up to 3 fields set to any value (enums:
    any int32, as on the wire), and maybe an odd time."""
    e = pb.Event(
        type=draw(st.sampled_from([pb.Event.TYPE_IMPRESSION, pb.Event.TYPE_NEGATIVE_FEEDBACK])),
        impression_id=draw(ID.filter(bool)),
        user_id="u1",
        household_id=draw(st.sampled_from(["", "h1"])),
        device_id="d1",
        touchpoint=pb.TOUCHPOINT_OTT,
        slot=pb.SLOT_OTT_PREROLL,
        ad_id="a1",
        campaign_id="c1",
        advertiser_id="v1",
        negative_kind=pb.Event.NEGATIVE_KIND_HIDE,
    )
    e.time.seconds = 1_767_225_600 + draw(st.integers(-86_400, 86_400))
    for name in draw(st.lists(st.sampled_from(sorted(_EVENT_FIELDS)), max_size=3)):
        setattr(e, name, draw(_EVENT_FIELDS[name]))
    if draw(st.booleans()):
        e.time.seconds, e.time.nanos = draw(SECONDS), draw(NANOS)
    return e


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(events(), max_size=4))
def test_any_event_batch_is_recorded_once_or_refused_by_field(
    servicer: AdMatchingServicer, batch: list[pb.Event]
) -> None:
    wire = pb.EventBatch.FromString(pb.EventBatch(events=batch).SerializeToString())
    try:
        reply = servicer.RecordEvents(wire, _Context())
    except Exception as exc:  # noqa: BLE001
        _assert_refused_well(exc)
        assert not isinstance(exc, StoreUnavailable), exc  # the store is up
        return
    event("recorded")
    impressions = sum(e.type == pb.Event.TYPE_IMPRESSION for e in batch)
    assert reply.impressions_recorded + reply.duplicates == impressions
    again = servicer.RecordEvents(wire, _Context())  # a retry counts nothing twice
    assert (again.impressions_recorded, again.duplicates) == (0, impressions)


# What the properties above found, pinned as examples.


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (1_767_225_600, -1),
        (1_767_225_600, 1_000_000_000),
        (2**40, 0),
        (-86_400, 0),
        (7_258_118_400, 0),
    ],
    ids=["nanos<0", "nanos>=1e9", "beyond-year-9999", "before-1970", "year-2200"],
)
def test_a_time_out_of_range_is_refused_naming_it(
    servicer: AdMatchingServicer, seconds: int, nanos: int
) -> None:
    msg = pb.ScoreRequest()
    msg.CopyFrom(BASES[0])
    msg.time.seconds, msg.time.nanos = seconds, nanos
    with pytest.raises(InvalidArgument) as info:
        servicer.Score(msg, _Context())
    assert info.value.field == ("time.nanos" if nanos else "time")
    event_ = pb.Event(
        type=pb.Event.TYPE_IMPRESSION,
        impression_id="late",
        user_id="u1",
        touchpoint=pb.TOUCHPOINT_OTT,
        slot=pb.SLOT_OTT_PREROLL,
        ad_id="a1",
    )
    event_.time.seconds, event_.time.nanos = seconds, nanos
    good = pb.Event()
    good.CopyFrom(event_)
    good.impression_id = f"fine-{seconds}-{nanos}"
    good.time.seconds, good.time.nanos = 1_767_225_600, 0
    with pytest.raises(InvalidArgument) as info:
        servicer.RecordEvents(pb.EventBatch(events=[good, event_]), _Context())
    assert info.value.field == ("events[1].time.nanos" if nanos else "events[1].time")
    # the refused batch recorded nothing: its valid impression is new when sent again
    reply = servicer.RecordEvents(pb.EventBatch(events=[good]), _Context())
    assert (reply.impressions_recorded, reply.duplicates) == (1, 0)


def test_the_core_refuses_a_time_out_of_range(servicer: AdMatchingServicer) -> None:
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    doc["ts"] = "1969-12-31T23:59:59Z"
    with pytest.raises(InvalidArgument) as info:
        request_from_json(doc).validate()
    assert info.value.field == "request.ts"
