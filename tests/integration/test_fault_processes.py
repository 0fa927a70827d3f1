"""Faults of the process model, on real ``admatch serve`` processes (issue 16, items 1-4):
the parent killed, a second server on a busy port, reloads that must reach every worker, health
while draining."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.rpc.convert import request_to_proto
from engine.scoring.jsonio import request_from_json

from .events import mobile_event
from .served import Launch, cmdline, config_file, edits, every_worker, model_info

SERVICE = "admatch.v1.AdMatching"
OPERATOR = {"ADMATCH_OPERATOR_TOKEN": "op-secret"}
AUTH = (("authorization", "Bearer op-secret"),)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().split(") ", 1)[1][:1]
    except FileNotFoundError:
        return f"{pid}: gone"
    return f"{pid} ({state}): {command}"


def _listening(port: int) -> bool:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_killing_the_parent_ends_its_workers_and_a_restart_serves(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: both workers kept serving (every answer "no ad": the embedded Redis died with the
    parent) and a new serve on the port stayed up with dead workers."""
    served = launch(model_dir, config_file(tmp_path), workers=2).ready()
    again = None
    try:
        workers = served.children()
        assert len(workers) >= 3  # two workers and the embedded Redis (and a resource tracker)
        served.signal(signal.SIGKILL)
        served.proc.wait(10)
        end = time.monotonic() + 5
        while time.monotonic() < end and (any(map(_alive, workers)) or _listening(served.port)):
            time.sleep(0.05)
        left = [_describe(pid) for pid in workers if _alive(pid)]
        assert not left, f"processes outlived their parent: {left}"
        assert not _listening(served.port), "the port is still served"
        again = launch(model_dir, config_file(tmp_path), port=served.port, workers=2).ready()
        assert len(every_worker(again.target(), 2)) == 2
        assert again.stop() == 0
    finally:
        served.kill_all()
        if again is not None:
            again.kill_all()


def test_a_second_server_on_a_busy_port_is_refused(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: it started silently (SO_REUSEPORT) with its own embedded Redis, and clients were
    split between two cap stores (a campaign capped at 3 got 6 impressions)."""
    first = launch(model_dir, config_file(tmp_path)).ready()
    try:
        second = launch(model_dir, config_file(tmp_path), port=first.port)
        assert second.proc.wait(60) == 1
        assert f"port {first.port} on 127.0.0.1 is in use by another process" in second.output()
        # a listener that is no admatch at all
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            busy = other.getsockname()[1]
            third = launch(model_dir, config_file(tmp_path), port=busy, workers=2)
            assert third.proc.wait(60) == 1
            assert f"port {busy} on 127.0.0.1 is in use" in third.output()
        assert model_info(first.target()).model_version  # the first one serves on
    finally:
        first.kill_all()


def test_a_server_that_cannot_start_exits_1_with_its_reason(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: a server whose workers could not bind stayed alive with dead workers."""
    config = config_file(tmp_path, **edits(host='"192.0.2.1"', required='"off"'))  # TEST-NET
    served = launch(model_dir, config, workers=2)
    assert served.proc.wait(60) == 1
    assert "cannot listen on 192.0.2.1:0: Cannot assign requested address" in served.output()
    with socket.socket() as metrics:  # a worker that cannot start: its metrics port is taken
        metrics.bind(("127.0.0.1", 0))
        metrics.listen()
        busy = metrics.getsockname()[1]
        served = launch(
            model_dir, config_file(tmp_path, **edits(metrics_port=str(busy))), workers=2
        )
        assert served.proc.wait(60) == 1
    assert "worker 0 could not start: [Errno 98] Address already in use" in served.output()
    assert not [pid for pid in served.children() if _alive(pid)]


def _retagged(model_dir: Path, tmp_path: Path, version: str) -> Path:
    copy = tmp_path / version
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["model_version"] = version
    (copy / "metadata.json").write_text(json.dumps(meta))
    return copy


def test_a_reload_reaches_every_worker_or_none(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: ReloadModel with --workers 2 switched only the worker that answered."""
    served = launch(model_dir, config_file(tmp_path), workers=2, env=OPERATOR).ready()
    try:
        before = every_worker(served.target(), 2)
        old = {i.model_version for i in before.values()}
        assert len(old) == 1
        newer = _retagged(model_dir, tmp_path, "reloaded-2")
        with grpc.insecure_channel(served.target()) as channel:
            stub = pb_grpc.AdMatchingStub(channel)
            reply = stub.ReloadModel(
                pb.ReloadModelRequest(model_dir=str(newer)), metadata=AUTH, timeout=120
            )
            assert reply.model_version == "reloaded-2"
            assert sorted(reply.workers) == sorted(before)  # every worker switched
            after = every_worker(served.target(), 2)
            assert {i.model_version for i in after.values()} == {"reloaded-2"}

            broken = tmp_path / "broken"
            shutil.copytree(newer, broken)
            (broken / "engaged.txt").write_text("not a model")
            with pytest.raises(grpc.RpcError) as err:
                stub.ReloadModel(
                    pb.ReloadModelRequest(model_dir=str(broken)), metadata=AUTH, timeout=120
                )
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            kept = every_worker(served.target(), 2)  # all or nothing: none switched
            assert {i.model_version for i in kept.values()} == {"reloaded-2"}
        assert served.stop() == 0
    finally:
        served.kill_all()


def test_the_file_watching_reload_reaches_every_worker(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    watched = _retagged(model_dir, tmp_path, "watched-1")
    config = config_file(tmp_path, **edits(reload_interval_s="0.2"))
    served = launch(watched, config, workers=2).ready()
    try:
        assert {i.model_version for i in every_worker(served.target(), 2).values()} == {"watched-1"}
        meta = json.loads((watched / "metadata.json").read_text())
        meta["model_version"] = "watched-2"
        (watched / "metadata.json").write_text(json.dumps(meta))
        config.write_text(config.read_text().replace('version = "default-1"', 'version = "c-2"'))
        end = time.monotonic() + 30
        seen: dict[str, pb.ModelInfo] = {}
        while time.monotonic() < end:
            seen = every_worker(served.target(), 2)
            if {(i.model_version, i.config_version) for i in seen.values()} == {
                ("watched-2", "c-2")
            }:
                break
            time.sleep(0.2)
        assert {(i.model_version, i.config_version) for i in seen.values()} == {
            ("watched-2", "c-2")
        }
        assert "reloaded" in served.output()
    finally:
        served.kill_all()


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


def test_health_says_not_serving_while_draining(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: health never left SERVING, so a load balancer kept sending to a server that was
    stopping. Now SIGTERM turns it NOT_SERVING at once; calls are still answered for drain_s."""
    config = config_file(tmp_path, **edits(drain_s="3.0"))
    served = launch(model_dir, config).ready()
    try:
        assert _health(served.target(), SERVICE) == health_pb2.HealthCheckResponse.SERVING
        served.signal(signal.SIGTERM)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        served.wait_for(
            lambda: _health(served.target(), "") == not_serving, 2.5, "NOT_SERVING while draining"
        )
        assert _health(served.target(), SERVICE) == not_serving
        assert model_info(served.target()).model_version  # still answering while draining
        assert served.proc.wait(30) == 0
    finally:
        served.kill_all()


def test_an_embedded_redis_that_dies_is_started_again(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """The embedded store is the parent's: when it dies, the parent starts it again (from its
    state directory: docs/operations.md) and the workers' circuit breakers pick it up."""
    served = launch(model_dir, config_file(tmp_path)).ready()
    try:
        redis_pid = next(p for p in served.children() if b"redis-server" in cmdline(p))
        os.kill(redis_pid, signal.SIGKILL)
        served.wait_for(
            lambda: (
                _health(served.target(), SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
                or "starting it again" in served.output()
            ),
            5,
            "the outage noticed",
        )
        served.wait_for(lambda: "embedded Redis died" in served.output(), 5, "a restart")
        served.wait_for(
            lambda: _health(served.target(), SERVICE) == health_pb2.HealthCheckResponse.SERVING,
            3,
            "SERVING again",
        )
        assert model_info(served.target()).model_version
    finally:
        served.kill_all()


def test_an_in_memory_store_is_refused_for_several_workers(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """Each worker would have a store of its own: caps would not hold across them."""
    config = config_file(tmp_path, **edits(url='"memory://"'))
    served = launch(model_dir, config, workers=2)
    assert served.proc.wait(60) == 1
    assert "memory:// is one process's store" in served.output()


def test_a_restarted_server_keeps_its_counts_and_the_users_blocks(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """The embedded store keeps its state in ``store.state_dir`` (``make run`` twice): after a
    restart a campaign at its cap stays capped, an ad the user hid stays hidden, and a retried
    impression is still a duplicate. Before, a restart forgot all three."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)

    def event(
        i: int,
        campaign: str,
        kind: pb.Event.NegativeKind.ValueType = pb.Event.NEGATIVE_KIND_UNSPECIFIED,
    ) -> pb.Event:
        what = pb.Event.TYPE_NEGATIVE_FEEDBACK if kind else pb.Event.TYPE_IMPRESSION
        when = now - timedelta(minutes=30 - i)
        return mobile_event(
            f"kept-{i}", "kept", f"ad_{campaign}", campaign, when, type=what, negative_kind=kind
        )

    def decide(target: str) -> dict[str, int]:
        doc = {
            "request_id": "kept-r",
            "ts": now.isoformat(),
            "user_id": "u_kept",
            "household_id": "h_kept",
            "device_id": "phone_kept",
            "touchpoint": "mobile",
            "slot": "mobile_feed",
            "local_hour": 12,
            "candidates": [
                {
                    "ad_id": f"ad_{campaign}",
                    "campaign_id": campaign,
                    "advertiser_id": f"adv_{campaign}",
                    "format": "image",
                    "bid": 10.0,
                    "pricing": "cpm",
                }
                for campaign in ("cmp_capped", "cmp_hidden", "cmp_free")
            ],
        }
        request = request_to_proto(request_from_json(doc))
        with grpc.insecure_channel(target) as channel:
            reply = pb_grpc.AdMatchingStub(channel).Score(request, timeout=10)
        return {d.ad_id: d.reason for d in reply.decisions}

    config = config_file(tmp_path)
    served = launch(model_dir, config).ready()
    events = [event(i, "cmp_capped") for i in range(3)]
    events += [event(3, "cmp_hidden"), event(4, "cmp_hidden", pb.Event.NEGATIVE_KIND_HIDE)]
    with grpc.insecure_channel(served.target()) as channel:
        stub = pb_grpc.AdMatchingStub(channel)
        reply = stub.RecordEvents(pb.EventBatch(events=events), timeout=10)
    assert (reply.impressions_recorded, reply.feedback_applied) == (4, 1)
    before = decide(served.target())
    assert served.stop() == 0
    again = launch(model_dir, config).ready()
    after = decide(again.target())
    assert after == before
    assert after["ad_cmp_capped"] == pb.REASON_FREQUENCY_CAPPED
    assert after["ad_cmp_hidden"] == pb.REASON_USER_BLOCKED
    assert after["ad_cmp_free"] not in (pb.REASON_FREQUENCY_CAPPED, pb.REASON_USER_BLOCKED)
    with grpc.insecure_channel(again.target()) as channel:
        retried = pb_grpc.AdMatchingStub(channel).RecordEvents(
            pb.EventBatch(events=events[:3]), timeout=10
        )
    assert retried.duplicates == 3
    assert again.stop() == 0


def test_workers_compute_with_the_configured_threads(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """server.compute_threads is each worker's polars pool (POLARS_MAX_THREADS, read when the
    spawned worker imports polars), whatever the parent's environment says: a server scales
    by processes, and a wider pool per worker spins between requests (BENCHMARKS.md)."""
    config = config_file(tmp_path, **edits(compute_threads="2"))
    served = launch(model_dir, config, workers=2, env={"POLARS_MAX_THREADS": "7"}).ready()
    try:
        workers = [p for p in served.children() if b"spawn_main" in cmdline(p)]
        workers = [p for p in workers if b"resource_tracker" not in cmdline(p)]
        assert len(workers) == 2, [cmdline(p) for p in served.children()]
        for pid in workers:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            assert env[b"POLARS_MAX_THREADS"] == b"2"
    finally:
        served.kill_all()
