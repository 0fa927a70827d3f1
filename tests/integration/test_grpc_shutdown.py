"""Graceful shutdown of `admatch serve`: SIGTERM lets in-flight calls finish; nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc

from .conftest import free_port

ADMATCH = Path(sys.executable).parent / "admatch"


def _events(n: int) -> pb.EventBatch:
    batch = pb.EventBatch()
    for i in range(n):
        e = batch.events.add(
            type=pb.Event.TYPE_IMPRESSION,
            impression_id=f"sd-{i}",
            user_id=f"u{i % 50}",
            household_id=f"h{i % 20}",
            device_id="tv",
            touchpoint=pb.TOUCHPOINT_OTT,
            slot=pb.SLOT_OTT_PAUSE,
            ad_id=f"a{i % 9}",
            campaign_id=f"c{i % 7}",
            advertiser_id=f"v{i % 5}",
        )
        e.time.FromJsonString("2026-03-03T12:00:00Z")
    return batch


def test_sigterm_finishes_in_flight_calls(
    model_dir: Path, local_redis_url: str, tmp_path: Path
) -> None:
    prefix = f"shutdown-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "config.toml"
    default = (Path(__file__).resolve().parents[2] / "engine" / "default_config.toml").read_text()
    config.write_text(
        default.replace('url = ""', f'url = "{local_redis_url}"')
        .replace('prefix = "admatch"', f'prefix = "{prefix}"')
        .replace("metrics_port = 9464", "metrics_port = 0")
        .replace("deadline_ms = 50", "deadline_ms = 5000")
    )
    proc = subprocess.Popen(
        [
            str(ADMATCH),
            "serve",
            "--model",
            str(model_dir),
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = redis.Redis.from_url(local_redis_url)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "admatch serving" in line, line
        replies: list[pb.RecordEventsResponse] = []
        answered: list[float] = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.AdMatchingStub(channel)

            def record() -> None:
                replies.append(stub.RecordEvents(_events(3000), timeout=30))
                answered.append(time.monotonic())

            call = threading.Thread(target=record)
            call.start()
            time.sleep(0.15)  # the batch is being recorded
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            call.join(30)
        assert proc.wait(30) == 0
        assert replies and replies[0].impressions_recorded == 3000
        assert answered[0] > signalled  # it was still in flight when the signal came
        markers = list(client.scan_iter(match=f"{prefix}:*:i:*", count=10_000))
        assert len(markers) == 3000  # every impression of the in-flight call is in the store
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
            pb_grpc.AdMatchingStub(channel).RecordEvents(_events(1), timeout=2)  # gone
    finally:
        if proc.poll() is None:
            proc.kill()
        for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
            client.delete(key)


def test_two_workers_share_the_port_and_the_store(model_dir: Path, tmp_path: Path) -> None:
    """--workers 2: both answer on one port (SO_REUSEPORT) and see the same cap store."""
    port = free_port()
    proc = subprocess.Popen(
        [str(ADMATCH), "serve", "--model", str(model_dir), "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 90
        while len(seen) < 2 and time.monotonic() < deadline:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # a new connection
                try:
                    grpc.channel_ready_future(channel).result(timeout=30)
                    info = pb_grpc.AdMatchingStub(channel).GetModelInfo(pb.GetModelInfoRequest())
                    seen.add(info.served_by)
                except grpc.FutureTimeoutError:
                    continue
        assert len(seen) == 2, seen
        recorded = []
        for _ in range(6):  # the same impression through fresh connections: counted once
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = pb_grpc.AdMatchingStub(channel).RecordEvents(_events(1), timeout=10)
                recorded.append(reply.impressions_recorded)
        assert sum(recorded) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
