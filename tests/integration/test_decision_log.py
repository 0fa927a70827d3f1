"""The decision and event logs of a real server, and their join into the ad-opportunity log
(issue 17, items 2-4)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pyarrow.parquet as pq
import pytest

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import build_app
from engine.config import load_config
from engine.errors import LogSchemaError
from engine.logs.decisions import DECISION_SCHEMA, DECISIONS
from engine.logs.join import Windows, join_logs, read_logs
from engine.rpc.convert import request_to_proto
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json
from features.logio import read_log

from .served import Launch, config_file, edits

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring" / "exemplary"
NOW = datetime.now(UTC).replace(microsecond=0)


def golden(name: str, request_id: str, minutes_ago: float = 180) -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / name).read_text())["request"]
    msg = request_to_proto(request_from_json(doc))
    msg.request_id = request_id
    msg.time.FromDatetime(NOW - timedelta(minutes=minutes_ago))
    return msg


def event(kind: Any, impression: str, minutes_ago: float, **kw: Any) -> pb.Event:
    e = pb.Event(type=kind, impression_id=impression, user_id="u000042", **kw)
    e.time.FromDatetime(NOW - timedelta(minutes=minutes_ago))
    return e


def served_logs(model_dir: Path, directory: Path, **log: Any) -> tuple[Any, Any]:
    config = load_config()
    updates = {
        "store": config.store.model_copy(update={"url": "memory://"}),
        "decision_log": config.decision_log.model_copy(update={"dir": str(directory), **log}),
        "exploration": config.exploration.model_copy(update={"share": 0.3, "seed": 3}),
    }
    app = build_app(config.model_copy(update=updates), model_dir)
    return app, build_server(app, config.server.model_copy(update={"port": 0}))


def test_every_decision_and_event_is_logged_and_joined(model_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    app, serving = served_logs(model_dir, logs)
    with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as ch:
        stub = pb_grpc.AdMatchingStub(ch)
        replies = []
        for i in range(40):
            msg = golden("ott_pause_family_evening.json", f"r{i}")
            msg.reserve_caps = i % 2 == 0  # half reserve; the others' impressions are reported
            msg.user.user_id = f"user{i}"
            replies.append(stub.Score(msg, timeout=10))
        dry = golden("ott_pause_family_evening.json", "dry")
        dry.explain = True
        stub.Score(dry, timeout=10)  # a dry run is not logged
        shown = [(i, r.impression_ids[0]) for i, r in enumerate(replies) if r.impression_ids]
        assert len(shown) > 20
        events = []
        for i, imp in shown:
            if i % 2:  # not reserved: the ad server reports the impression
                events.append(
                    event(
                        pb.Event.TYPE_IMPRESSION,
                        imp,
                        9,
                        ad_id=imp.split(":")[1],
                        touchpoint=pb.TOUCHPOINT_OTT,
                        slot=pb.SLOT_OTT_PAUSE,
                    )
                )
            if i % 3 == 0:
                events.append(event(pb.Event.TYPE_ENGAGEMENT, imp, 179))
            if i % 5 == 0:
                events.append(
                    event(
                        pb.Event.TYPE_NEGATIVE_FEEDBACK,
                        imp,
                        178,
                        negative_kind=pb.Event.NEGATIVE_KIND_SKIP,
                    )
                )
        late = event(pb.Event.TYPE_ENGAGEMENT, shown[1][1], 0)  # 3 h after its decision
        late.event_id = "late-one"
        events += [
            late,
            event(pb.Event.TYPE_ENGAGEMENT, "nobody:x", 179),  # an orphan
            event(pb.Event.TYPE_CONVERSION, shown[0][1], 175),
        ]
        stub.RecordEvents(pb.EventBatch(events=events), timeout=10)
        stub.RecordEvents(pb.EventBatch(events=events[:3]), timeout=10)  # a retried batch
    serving.stop(1)
    app.close()  # finalises the open files
    files = sorted(logs.glob("decisions-*.parquet"))
    assert files and not list(logs.glob("*.partial"))
    assert pq.read_schema(files[0]).metadata[b"admatch.log"] == b"decisions/1"
    decisions = read_log(files[0])  # a decision log file is an ad-opportunity log as it is
    assert decisions["request_id"].n_unique() == 40  # every decision, the dry run not
    out = tmp_path / "joined.parquet"
    report = join_logs(str(logs), out, Windows())
    log = read_log(out)
    assert log.height == decisions.height and report["requests"] == 40
    by_id = {r["impression_id"]: r for r in log.filter("shown").iter_rows(named=True)}
    assert set(by_id) == {imp for _, imp in shown}  # reserved or reported: shown
    for i, imp in shown:
        row = by_id[imp]
        assert row["engaged"] == (i % 3 == 0), imp
        assert row["negative"] == (i % 5 == 0)
        assert row["negative_kind"] == ("skip" if i % 5 == 0 else None)
        assert 0 < row["propensity"] <= 1
    assert by_id[shown[0][1]]["converted"]
    assert (
        log.filter(~pl.col("shown"))["engaged"].null_count() == log.filter(~pl.col("shown")).height
    )
    not_used = report["events_not_used"]
    assert not_used == {
        "late: after its attribution window": 1,
        "orphan: no decision selected this impression id": 1,
        "repeated event id": 3,
    }
    kept = pl.read_parquet(tmp_path / "joined.not_used.parquet")
    assert kept.height == 5 and set(kept["why"]) == set(not_used)


def test_another_version_is_refused_by_name(tmp_path: Path) -> None:
    frame = pl.DataFrame(schema=DECISION_SCHEMA).to_arrow()
    frame = frame.replace_schema_metadata({b"admatch.log": b"decisions/7"})
    pq.write_table(frame, tmp_path / "decisions-20260101T000000.000000-h-1-1.parquet")
    with pytest.raises(LogSchemaError) as err:
        read_logs(str(tmp_path), DECISIONS, DECISION_SCHEMA)
    assert "is version 7: this admatch reads decisions logs of version 1" in str(err.value)


def test_a_crash_loses_at_most_the_open_file(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """kill -9 of the whole server: once a server runs again on the logs, they hold every
    decision older than the rotation interval (1 s here) and the time a write takes."""
    logs = tmp_path / "logs"
    config = config_file(
        tmp_path,
        **edits(url='"memory://"', rotate_s="1.0"),
        **{'dir = ""': f'dir = "{logs}"'},
    )
    served = launch(model_dir, config).ready()
    answered: list[tuple[str, float]] = []
    with grpc.insecure_channel(served.target()) as ch:
        stub = pb_grpc.AdMatchingStub(ch)
        end = time.monotonic() + 4.0
        i = 0
        while time.monotonic() < end:
            stub.Score(golden("iot_idle_screen.json", f"k{i}", 1), timeout=10)
            answered.append((f"k{i}", time.monotonic()))
            i += 1
    killed = time.monotonic()
    served.kill_all()  # SIGKILL to the parent, every worker and their converters
    # the server is started again on the same logs: its converter adopts the dead workers'
    # spool files (the finalised ones, and the open ones up to their last whole record)
    again = launch(model_dir, config).ready()
    assert again.stop() == 0
    logged = set(read_logs(str(logs), DECISIONS, DECISION_SCHEMA)["request_id"].unique())
    bound_s = 1.0 + 1.0  # the rotation interval, and a write's and a pass's time
    old = {rid for rid, at in answered if at < killed - bound_s}
    assert old and old <= logged, len(old - logged)
    assert not list(logs.rglob("*.spool*"))  # all converted


def test_an_unwritable_log_directory_does_not_stop_the_service(
    model_dir: Path, tmp_path: Path
) -> None:
    """The server answers on; the drops are counted (metrics) and health says so for
    admatch.v1.DecisionLog (the service itself stays SERVING)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client import generate_latest

    from engine.rpc.metrics import Metrics

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the log directory should be")
    config = load_config()
    updates = {
        "store": config.store.model_copy(update={"url": "memory://"}),
        "decision_log": config.decision_log.model_copy(update={"dir": str(blocked)}),
    }
    app = build_app(config.model_copy(update=updates), model_dir)
    metrics = Metrics()
    serving = build_server(app, config.server.model_copy(update={"port": 0}), metrics=metrics)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            health = health_pb2_grpc.HealthStub(ch)

            def status(name: str) -> int:
                request = health_pb2.HealthCheckRequest(service=name)
                return int(health.Check(request, timeout=5).status)

            assert status("admatch.v1.DecisionLog") == health_pb2.HealthCheckResponse.SERVING
            for i in range(5):
                assert stub.Score(golden("iot_idle_screen.json", f"b{i}"), timeout=10).decisions
            end = time.monotonic() + 5
            assert app.logs is not None
            while app.logs.decisions.stats.dropped < 5 and time.monotonic() < end:
                time.sleep(0.05)
            assert status("admatch.v1.DecisionLog") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("admatch.v1.AdMatching") == health_pb2.HealthCheckResponse.SERVING
        text = generate_latest(metrics.registry).decode()
        assert 'admatch_log_dropped{kind="decisions"} 5.0' in text
        assert 'admatch_log_up{kind="decisions"} 0.0' in text
    finally:
        serving.stop(1)
        app.close()
