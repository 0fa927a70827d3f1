"""The gRPC service against a real server on a free port, through its interceptor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App
from engine.rpc.convert import request_to_proto
from engine.rpc.server import SERVICE, build_server
from engine.scoring.jsonio import request_from_json

from .conftest import memory_app
from .events import mobile_event

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"


@pytest.fixture
def app(model_dir: Path) -> Iterator[App]:
    application = memory_app(model_dir)
    yield application
    application.close()


@pytest.fixture
def channel(app: App) -> Iterator[grpc.Channel]:
    limits = app.scorer.config.server.model_copy(
        update={"port": 0, "max_candidates": 6, "operator_token": "op-secret"}
    )
    serving = build_server(app, limits)
    with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as ch:
        yield ch
    serving.stop(1)


def golden(name: str, **changes: Any) -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / name).read_text())["request"]
    doc.update(changes)
    return request_to_proto(request_from_json(doc))


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert SERVICE == "admatch.v1.AdMatching" and SERVICE in names


def test_score_over_grpc_equals_in_process(app: App, channel: grpc.Channel) -> None:
    stub = pb_grpc.AdMatchingStub(channel)
    request = golden("exemplary/ott_preroll_pod.json")
    reply = stub.Score(request)
    local = app.decide(
        request_from_json(
            json.loads((GOLDEN / "exemplary/ott_preroll_pod.json").read_text())["request"]
        )
    )
    assert list(reply.selected_ad_ids) == local.selected and len(reply.decisions) == 5
    assert reply.model_version == app.scorer.model.version and reply.config_version == "default-1"
    streamed = list(stub.ScoreStream(iter([request, golden("edge/all_zero_bids_no_ad.json")])))
    assert [r.request_id for r in streamed] == ["g-preroll", "g-zero"]
    assert list(streamed[1].selected_ad_ids) == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "touchpoint", 0), "touchpoint"),
        (lambda m: m.ClearField("time"), "time"),
        (
            lambda m: setattr(m.candidates.items[0], "bid", float("nan")),
            "candidates.items[0].bid",
        ),
        (lambda m: setattr(m, "local_hour", 24), "local_hour"),
    ],
    ids=["touchpoint", "time", "nan-bid", "local-hour"],
)
def test_bad_requests_are_invalid_argument(channel: grpc.Channel, mutate: Any, field: str) -> None:
    request = golden("exemplary/ott_pause_family_evening.json")
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.AdMatchingStub(channel).Score(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")


def test_bytes_that_are_no_message_are_invalid_argument(channel: grpc.Channel) -> None:
    """grpc alone would answer INTERNAL ("Exception deserializing request!") and log a
    traceback; a stream answers the messages before the bad one."""
    for method in ("Score", "RecordEvents", "GetModelInfo"):
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert info.value.details().startswith("request: the bytes are not a valid request")
    good = golden("exemplary/ott_pause_family_evening.json").SerializeToString()
    stream = channel.stream_stream(f"/{SERVICE}/ScoreStream")
    answers = [pb.ScoreResponse.FromString(a) for a in stream(iter([good, b"\x0a\x05ab", good]))]
    assert [a.request_id for a in answers] == ["g-ott-pause", "", "g-ott-pause"]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[1].error.message.startswith("request: the bytes are not a valid request")
    assert not answers[0].HasField("error") and answers[2].decisions  # the stream went on


def event(i: int, campaign: str, **kw: Any) -> pb.Event:
    e = pb.Event(
        type=pb.Event.TYPE_IMPRESSION,
        impression_id=f"imp-{i}",
        user_id="u000042",
        household_id="h000017",
        device_id="tv000017",
        touchpoint=pb.TOUCHPOINT_OTT,
        slot=pb.SLOT_OTT_PAUSE,
        ad_id="pause_img_sports",
        campaign_id=campaign,
        advertiser_id="adv_x",
        **kw,
    )
    e.time.FromJsonString(f"2026-03-03T11:0{i}:00Z")
    return e


def test_recorded_impressions_cap_later_requests(channel: grpc.Channel) -> None:
    stub = pb_grpc.AdMatchingStub(channel)
    events = [event(i, "cmp_pause_img_sports") for i in range(3)]
    first = stub.RecordEvents(pb.EventBatch(events=events))
    again = stub.RecordEvents(pb.EventBatch(events=events[:1]))
    assert (first.impressions_recorded, again.impressions_recorded, again.duplicates) == (3, 0, 1)
    reply = stub.Score(golden("exemplary/ott_pause_family_evening.json"))
    reasons = {d.ad_id: pb.Reason.Name(d.reason) for d in reply.decisions}
    assert reasons["pause_img_sports"] == "REASON_FREQUENCY_CAPPED"  # 3 per user per day


def test_reserve_caps_records_the_selected_ads(channel: grpc.Channel) -> None:
    stub = pb_grpc.AdMatchingStub(channel)
    request = golden("edge/pod_override_one_ad.json")
    request.reserve_caps = True
    chosen = list(stub.Score(request).selected_ad_ids)
    assert chosen
    replay = event(9, "x")
    replay.impression_id = f"g-pod-override:{chosen[0]}"  # the id the reservation recorded
    assert stub.RecordEvents(pb.EventBatch(events=[replay])).duplicates == 1


def test_times_too_far_ahead_of_the_clock_are_refused_naming_them(channel: grpc.Channel) -> None:
    """An impression (or a reservation) timed more than ``store.max_ahead`` (5 minutes) after
    the server's clock would push real counts out of the store: refused naming its time, and
    nothing of its batch is recorded. One inside the margin is recorded."""
    stub = pb_grpc.AdMatchingStub(channel)
    now = datetime.now(UTC)
    near, far = event(1, "c_near"), event(2, "c_far")
    near.time.FromDatetime(now + timedelta(minutes=4))
    far.time.FromDatetime(now + timedelta(minutes=6))
    with pytest.raises(grpc.RpcError) as info:
        stub.RecordEvents(pb.EventBatch(events=[near, far]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("events[1].time: ")
    assert "store.max_ahead" in info.value.details()
    reply = stub.RecordEvents(pb.EventBatch(events=[near]))
    assert (reply.impressions_recorded, reply.duplicates) == (1, 0)  # the refused batch: nothing

    request = golden("edge/pod_override_one_ad.json")
    request.time.FromDatetime(now + timedelta(days=30))
    assert stub.Score(request).selected_ad_ids  # a read at any time records nothing
    request.reserve_caps = True
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("time: ")


def test_model_info_and_refused_reload(app: App, channel: grpc.Channel, tmp_path: Path) -> None:
    stub = pb_grpc.AdMatchingStub(channel)
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model_version == app.scorer.model.version and info.feature_count == 51
    assert info.metrics["engaged.auc"] > 0.5
    auth = (("authorization", "Bearer op-secret"),)
    with pytest.raises(grpc.RpcError) as err:
        stub.ReloadModel(pb.ReloadModelRequest(model_dir=str(tmp_path)), metadata=auth)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetModelInfo(pb.GetModelInfoRequest()).model_version == info.model_version
    assert (
        stub.ReloadModel(pb.ReloadModelRequest(), metadata=auth).model_version == info.model_version
    )


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), "UNAUTHENTICATED"),
        ((("authorization", "Bearer wrong"),), "UNAUTHENTICATED"),
        ((("authorization", "op-secret"),), "UNAUTHENTICATED"),
        ((("authorization", "bearer op-secret"),), "OK"),
        ((("authorization", "BEARER  op-secret "),), "OK"),
    ],
    ids=["no-token", "wrong-token", "not-bearer", "lower-case-scheme", "upper-case-spaces"],
)
def test_operator_rpc_needs_the_token(channel: grpc.Channel, metadata: Any, code: str) -> None:
    """The scheme is case-insensitive (RFC 7235); a token no principal holds is not valid
    credentials (UNAUTHENTICATED)."""
    stub = pb_grpc.AdMatchingStub(channel)
    if code == "OK":
        assert stub.ReloadModel(pb.ReloadModelRequest(), metadata=metadata).workers
        return
    with pytest.raises(grpc.RpcError) as err:
        stub.ReloadModel(pb.ReloadModelRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode[code]


def test_operator_rpcs_are_off_without_a_configured_token(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMATCH_OPERATOR_TOKEN", raising=False)
    limits = app.scorer.config.server.model_copy(update={"port": 0})
    serving = build_server(app, limits)
    port = serving.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.AdMatchingStub(ch).ReloadModel(
                pb.ReloadModelRequest(), metadata=(("authorization", "Bearer anything"),)
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ADMATCH_OPERATOR_TOKEN" in err.value.details()
    finally:
        serving.stop(1)


def test_unexpected_errors_are_internal_and_generic(
    app: App, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app.scorer, "score_batch", boom)  # fails inside the scoring pass
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.AdMatchingStub(channel).Score(golden("exemplary/iot_idle_screen.json"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"


NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_a_node_client_speaks_the_contract(app: App, channel: grpc.Channel) -> None:
    """An independent client (@grpc/grpc-js + @grpc/proto-loader) loading our .proto files."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client test is skipped")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("tests/node/node_modules missing: run scripts/setup.sh (it runs npm ci)")
    target = channel._channel.target().decode()
    out = subprocess.run(
        [node, str(NODE_DIR / "client.mjs"), target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert (seen["recorded"], seen["duplicates"]) == (3, 1)
    assert seen["reasons"]["n1"] == "REASON_FREQUENCY_CAPPED"  # three impressions today
    assert seen["selected"] == ["n2"] and seen["model_version"] == app.scorer.model.version
    # the standard details of a refusal, read by another implementation
    assert seen["refused"] == {"code": 3, "status_code": 3, "fields": ["candidates.items[1].bid"]}
    # a bad message in a stream: its own error, and the stream goes on
    assert seen["stream"] == [
        {"request_id": "node-s1", "error": None, "decisions": 2},
        {"request_id": "node-s2", "error": [3, "touchpoint: required"], "decisions": 0},
        {"request_id": "node-s3", "error": None, "decisions": 2},
    ]


def test_limits_candidates_and_message_size(channel: grpc.Channel) -> None:
    stub = pb_grpc.AdMatchingStub(channel)
    request = golden("exemplary/ott_preroll_pod.json")
    for i in range(2):  # 7 candidates; the fixture's limit is 6
        request.candidates.items.add().CopyFrom(request.candidates.items[0])
        request.candidates.items[-1].ad_id = f"extra{i}"
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "candidates.items: 7 entries, at most 6 (server.max_candidates)"
    huge = golden("exemplary/iot_idle_screen.json")
    huge.user.interests.append("x" * 5_000_000)  # above the 4 MiB message limit
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_excess_concurrent_requests_are_shed(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()
    real = app.run

    def slow(*args: Any, **kw: Any) -> Any:
        gate.wait(5)
        return real(*args, **kw)

    monkeypatch.setattr(app, "run", slow)
    limits = app.scorer.config.server.model_copy(update={"port": 0, "max_concurrent": 1})
    serving = build_server(app, limits)
    port = serving.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            request = golden("exemplary/iot_idle_screen.json")
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(stub.Score, request, timeout=10)
                time.sleep(0.3)  # the first is in flight, holding the only slot
                with pytest.raises(grpc.RpcError) as info:
                    stub.Score(request, timeout=10)
                gate.set()
                assert first.result().request_id == "g-iot"
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        serving.stop(1)


def test_score_command_calls_a_running_server(channel: grpc.Channel, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engine.cli import app as cli

    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(json.loads((GOLDEN / "exemplary/ott_preroll_pod.json").read_text())["request"])
    )
    target = channel._channel.target().decode()
    result = CliRunner().invoke(cli, ["score", "--target", target, "--request", str(request)])
    assert result.exit_code == 0, result.output
    assert "g-preroll" in result.output and "COMPETITIVE_SEPARATION" in result.output
    result = CliRunner().invoke(
        cli, ["score", "--target", target, "--request", str(request), "--json", "--columnar"]
    )
    assert result.exit_code == 0 and json.loads(result.output)["request_id"] == "g-preroll"
    result = CliRunner().invoke(
        cli, ["score", "--target", "127.0.0.1:1", "--request", str(request), "--timeout", "0.5"]
    )
    assert result.exit_code == 2 and "UNAVAILABLE" in result.output


def test_metrics_count_requests_stages_and_decisions(app: App) -> None:
    import urllib.request

    from prometheus_client import generate_latest

    from benchmarks.cluster import free_port
    from engine.rpc.metrics import Metrics

    metrics = Metrics()
    limits = app.scorer.config.server.model_copy(update={"port": 0})
    serving = build_server(app, limits, metrics=metrics)
    port = serving.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            stub.Score(golden("exemplary/ott_preroll_pod.json"))
            stub.Score(golden("edge/all_zero_bids_no_ad.json"))
            bad = golden("exemplary/iot_idle_screen.json")
            bad.touchpoint = pb.TOUCHPOINT_UNSPECIFIED
            with pytest.raises(grpc.RpcError):
                stub.Score(bad)
        text = generate_latest(metrics.registry).decode()
        assert 'admatch_requests_total{code="OK",method="Score"} 2.0' in text
        assert 'admatch_requests_total{code="INVALID_ARGUMENT",method="Score"} 1.0' in text
        assert 'admatch_stage_seconds_count{stage="decode"} 3.0' in text  # a failed one too
        for stage in ("caps", "features", "model", "rank", "encode"):
            assert f'admatch_stage_seconds_count{{stage="{stage}"}} 2.0' in text, stage
        assert 'admatch_decisions_total{reason="COMPETITIVE_SEPARATION"} 1.0' in text
        assert "admatch_no_ad_total 1.0" in text and "admatch_scored_requests_total 2.0" in text
        # one pass each (calls one after the other), the refused one too (it fails in its pass)
        assert "admatch_batch_passes 3.0" in text and "admatch_batch_pass_requests 3.0" in text
        assert f"admatch_batch_target {float(app.batch_stats[2])}" in text
        assert f'model_version="{app.scorer.model.version}"' in text
        http_port = free_port()
        metrics.serve_http("127.0.0.1", http_port)
        body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read()
        assert b"admatch_cap_store_errors 0.0" in body
    finally:
        serving.stop(1)


@pytest.mark.parametrize(
    ("max_deadline_ms", "client_timeout_s", "server_says"),
    [(100.0, 10.0, True), (10_000.0, 0.15, False)],
    ids=["server-maximum", "client-deadline"],
)
def test_a_spent_deadline_ends_the_call_and_reserves_nothing(
    app: App,
    monkeypatch: pytest.MonkeyPatch,
    max_deadline_ms: float,
    client_timeout_s: float,
    server_says: bool,
) -> None:
    import threading
    import time

    gate = app._gate
    real_prepare, reserved, finished = gate.prepare, [], threading.Event()

    def slow_prepare(*args: Any, **kw: Any) -> Any:
        time.sleep(0.3)  # a slow cap store: the budget runs out during the read
        return real_prepare(*args, **kw)

    def spy_reserve(*args: Any, **kw: Any) -> bool:
        reserved.append(args)
        return True

    real_run = app.run

    def run(*args: Any, **kw: Any) -> Any:
        try:
            return real_run(*args, **kw)
        finally:
            finished.set()

    monkeypatch.setattr(gate, "prepare", slow_prepare)
    monkeypatch.setattr(gate, "reserve", spy_reserve)
    monkeypatch.setattr(app, "run", run)
    limits = app.scorer.config.server.model_copy(
        update={"port": 0, "max_deadline_ms": max_deadline_ms}
    )
    serving = build_server(app, limits)
    port = serving.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            request = golden("exemplary/iot_idle_screen.json")
            request.reserve_caps = True
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.AdMatchingStub(ch).Score(request, timeout=client_timeout_s)
            assert finished.wait(5)  # the server-side call has ended too
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if server_says:
            assert info.value.details() == "deadline of 100 ms exceeded before scoring"
        assert reserved == []
    finally:
        serving.stop(1)


def test_without_a_deadline_the_default_budget_applies(app: App) -> None:
    from engine.rpc.metrics import Metrics
    from engine.rpc.service import AdMatchingServicer

    class NoDeadline:
        def time_remaining(self) -> None:
            return None

    server = app.scorer.config.server.model_copy(
        update={"default_deadline_ms": 250.0, "max_deadline_ms": 1000.0}
    )
    servicer = AdMatchingServicer(app, server, Metrics())
    assert servicer._deadline(NoDeadline()).budget_s == 0.25


def test_a_stream_that_goes_away_gives_back_its_places_in_flight(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages admitted and not yet answered when the client cancels its stream leave the
    count of requests in flight; else a few cancelled streams would refuse every later request
    with RESOURCE_EXHAUSTED."""
    import threading
    import time

    real_run, started = app.scorer.score_batch, threading.Event()

    def slow(*args: Any, **kw: Any) -> Any:
        started.set()
        time.sleep(0.3)  # the client cancels while its messages are in flight
        return real_run(*args, **kw)

    monkeypatch.setattr(app.scorer, "score_batch", slow)
    limits = app.scorer.config.server.model_copy(update={"port": 0, "max_concurrent": 4})
    serving = build_server(app, limits)
    try:
        admission = serving.servicer.admission
        with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            request = golden("exemplary/iot_idle_screen.json")
            for _ in range(3):
                started.clear()
                call = stub.ScoreStream(iter([request] * 4), timeout=10)
                assert started.wait(5)
                call.cancel()
                end = time.monotonic() + 5
                while (admission.in_flight or admission.streams) and time.monotonic() < end:
                    time.sleep(0.02)
                assert admission.in_flight == 0 and admission.streams == 0
            assert stub.Score(request, timeout=10).decisions  # not refused
    finally:
        serving.stop(1)


def _mobile_pod(request_id: str, reserve: bool) -> pb.ScoreRequest:
    """A mobile feed pod of three: three ads of one campaign (apart in advertiser and
    category, so only caps can keep them apart) bidding above two others."""
    ads = [("cap_a", "cmp_cap", 90.0), ("cap_b", "cmp_cap", 85.0), ("cap_c", "cmp_cap", 80.0)]
    ads += [("free_d", "cmp_free_d", 20.0), ("free_e", "cmp_free_e", 15.0)]
    doc = {
        "request_id": request_id,
        "ts": "2026-03-03T12:15:00+00:00",
        "user_id": "u_pod",
        "household_id": "h_pod",
        "device_id": "phone_pod",
        "touchpoint": "mobile",
        "slot": "mobile_feed",
        "scene": "personal",
        "local_hour": 12,
        "age_band": "35_44",
        "content_rating": "general",
        "pod": {"max_ads": 3},
        "candidates": [
            {
                "ad_id": ad,
                "creative_id": f"cr_{ad}",
                "campaign_id": campaign,
                "advertiser_id": f"adv_{ad}",
                "category": ["food", "auto", "travel", "tech", "sports"][i],
                "format": "image",
                "duration_s": 10.0,
                "bid": bid,
                "pricing": "cpm",
                "suitability_tier": "general",
            }
            for i, (ad, campaign, bid) in enumerate(ads)
        ],
    }
    request = request_to_proto(request_from_json(doc))
    request.reserve_caps = reserve
    return request


def _mobile_event(impression_id: str, ad: str, campaign: str, hh_mm: str) -> pb.Event:
    when = datetime.fromisoformat(f"2026-03-03T{hh_mm}:00+00:00")
    return mobile_event(impression_id, "pod", ad, campaign, when)


@pytest.mark.parametrize("reserve", [False, True])
def test_ads_of_one_pod_count_toward_each_others_caps(channel: grpc.Channel, reserve: bool) -> None:
    """The campaign has one exposure left under "three per user per campaign per day": a pod
    takes one of its three ads and fills the rest with others, reserving or not (without
    reservation it took all three; with it, it chose three and kept one)."""
    stub = pb_grpc.AdMatchingStub(channel)
    seen = [_mobile_event(f"pod-imp-{i}", "cap_z", "cmp_cap", f"1{i}:00") for i in range(2)]
    assert stub.RecordEvents(pb.EventBatch(events=seen)).impressions_recorded == 2
    reply = stub.Score(_mobile_pod(f"pod-{reserve}", reserve))
    assert list(reply.selected_ad_ids) == ["cap_a", "free_d", "free_e"]
    why = {d.ad_id: d.reason for d in reply.decisions}
    assert why["cap_b"] == why["cap_c"] == pb.REASON_FREQUENCY_CAPPED
    if reserve:
        assert list(reply.impression_ids) == [f"pod-True:{a}" for a in reply.selected_ad_ids]


def test_the_response_names_the_impression_ids_it_reserved(channel: grpc.Channel) -> None:
    """Each selected ad's impression id is in the response, in order. Reserved, reporting it
    is a duplicate; not reserved, its first report counts and a second is a duplicate."""
    stub = pb_grpc.AdMatchingStub(channel)
    reply = stub.Score(_mobile_pod("ids-1", reserve=True))
    assert len(reply.impression_ids) == len(reply.selected_ad_ids) == 3
    events = [
        _mobile_event(imp, ad, "cmp_any", "12:15")
        for imp, ad in zip(reply.impression_ids, reply.selected_ad_ids, strict=True)
    ]
    again = stub.RecordEvents(pb.EventBatch(events=events))
    assert (again.impressions_recorded, again.duplicates) == (0, 3)
    unreserved = stub.Score(_mobile_pod("ids-2", reserve=False))
    assert list(unreserved.impression_ids) == [f"ids-2:{a}" for a in unreserved.selected_ad_ids]
    events = [
        _mobile_event(imp, ad, "cmp_any", "12:15")
        for imp, ad in zip(unreserved.impression_ids, unreserved.selected_ad_ids, strict=True)
    ]
    first = stub.RecordEvents(pb.EventBatch(events=events))
    again = stub.RecordEvents(pb.EventBatch(events=events))
    assert (first.impressions_recorded, again.duplicates) == (3, 3)


@pytest.mark.parametrize(
    "name",
    [
        "edge/minor_never_gets_restricted_categories.json",
        "edge/child_present_family_scene.json",
        "edge/shared_screen_audience_unknown.json",
        "exemplary/adult_alone_may_see_restricted.json",
        "exemplary/shared_screen_adults_only.json",
        "edge/child_present_audience.json",
        "edge/voice_task_running_no_ad.json",
        "edge/voice_task_completed_short_only.json",
        "exemplary/voice_idle.json",
        "edge/request_block_lists.json",
        "edge/request_blocked_attributes.json",
        "edge/campaign_content_exclusions.json",
        "edge/stream_separation_across_pods.json",
        "edge/complaint_blocks_the_category.json",
        "edge/conversion_stops_the_campaign.json",
        "edge/screensaver_shipped_attribute_blocks.json",
    ],
)
def test_protection_goldens_over_grpc(channel: grpc.Channel, name: str) -> None:
    """The protections' golden decisions, with their reason codes on the wire; a stateful
    case's history is reported first (RecordEvents), as an ad server would."""
    doc = json.loads((GOLDEN / name).read_text())
    expected = doc["expected"]
    stub = pb_grpc.AdMatchingStub(channel)
    if "history" in doc:
        events = json_format.ParseDict({"events": doc["history"]}, pb.EventBatch())
        assert stub.RecordEvents(events).impressions_recorded >= 1
    reply = stub.Score(golden(name))
    assert list(reply.selected_ad_ids) == expected["selected"]
    reasons = {d.ad_id: pb.Reason.Name(d.reason) for d in reply.decisions}
    assert reasons == {ad: f"REASON_{c['reason']}" for ad, c in expected["candidates"].items()}


def test_a_conversion_and_a_complaint_block_at_once(channel: grpc.Channel) -> None:
    """The shipped block rules over the wire: a conversion stops its campaign, a complaint
    the ad's whole category, from the next request on."""
    stub = pb_grpc.AdMatchingStub(channel)
    bought = _mobile_event("conv-imp", "cap_z", "cmp_cap", "11:00")
    bought.type = pb.Event.TYPE_CONVERSION
    disliked = _mobile_event("tech-imp", "tech_q", "cmp_tech", "11:30")
    disliked.type, disliked.negative_kind = (
        pb.Event.TYPE_NEGATIVE_FEEDBACK,
        pb.Event.NEGATIVE_KIND_COMPLAINT,
    )
    disliked.category = "tech"
    before = stub.Score(_mobile_pod("unblocked", False))
    assert list(before.selected_ad_ids) == ["cap_a", "cap_b", "cap_c"]
    # the campaign stopped; the category, and the complaint's own campaign, blocked
    assert stub.RecordEvents(pb.EventBatch(events=[bought, disliked])).feedback_applied == 3
    reply = stub.Score(_mobile_pod("blocked", False))
    assert list(reply.selected_ad_ids) == ["free_e"]
    why = {d.ad_id: d.reason for d in reply.decisions}
    assert {why[a] for a in ("cap_a", "cap_b", "cap_c", "free_d")} == {pb.REASON_USER_BLOCKED}


def _ott_shown(impression_id: str, hh_mm: str, advertiser: str, category: str) -> pb.Event:
    """An impression on the golden OTT request's TV (another campaign, another ad)."""
    e = pb.Event(
        type=pb.Event.TYPE_IMPRESSION,
        impression_id=impression_id,
        user_id="u000042",
        household_id="h000017",
        device_id="tv000017",
        touchpoint=pb.TOUCHPOINT_OTT,
        slot=pb.SLOT_OTT_PREROLL,
        ad_id=f"shown_{impression_id}",
        campaign_id=f"cmp_{impression_id}",
        advertiser_id=advertiser,
        category=category,
    )
    e.time.FromJsonString(f"2026-03-03T{hh_mm}:00Z")
    return e


@pytest.mark.parametrize(("hh_mm", "apart"), [("12:05", True), ("11:55", False)])
def test_stream_separation_across_pods(channel: grpc.Channel, hh_mm: str, apart: bool) -> None:
    """The shipped separation (one TV: one advertiser, or competing categories, not within
    15 minutes): an earlier pod's food ad of adv_food and insurance ad (caps.competing:
    finance) keep the pause request's ad of adv_food and its finance ad off the screen, 10
    minutes on; 20 minutes on they are back."""
    stub = pb_grpc.AdMatchingStub(channel)
    shown = [
        _ott_shown("s1", hh_mm, "adv_food", "snacks"),
        _ott_shown("s2", hh_mm, "adv_i", "insurance"),
    ]
    assert stub.RecordEvents(pb.EventBatch(events=shown)).impressions_recorded == 2
    reply = stub.Score(golden("exemplary/ott_pause_family_evening.json"))
    why = {d.ad_id: pb.Reason.Name(d.reason) for d in reply.decisions}
    kept_apart = {a for a, r in why.items() if r == "REASON_COMPETITIVE_SEPARATION"}
    assert kept_apart == ({"pause_vid_food", "pause_img_finance"} if apart else set()), why
