"""Graceful shutdown of `admatch serve`: SIGTERM lets in-flight calls finish; nothing is lost."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from benchmarks.cluster import free_port
from engine.caps.keys import FP_BYTES

from .served import Launch, config_file, edits, every_worker


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
    launch: Launch, model_dir: Path, local_redis_url: str, tmp_path: Path
) -> None:
    prefix = f"shutdown-{uuid.uuid4().hex[:8]}"
    config = config_file(
        tmp_path,
        **edits(url=f'"{local_redis_url}"', prefix=f'"{prefix}"', deadline_ms="5000"),
    )
    served = launch(model_dir, config, port=free_port())
    client = redis.Redis.from_url(local_redis_url)
    try:
        served.ready()
        replies: list[pb.RecordEventsResponse] = []
        answered: list[float] = []
        with grpc.insecure_channel(served.target()) as channel:
            stub = pb_grpc.AdMatchingStub(channel)

            def record() -> None:
                replies.append(stub.RecordEvents(_events(3000), timeout=30))
                answered.append(time.monotonic())

            call = threading.Thread(target=record)
            call.start()
            time.sleep(0.15)  # the batch is being recorded
            signalled = time.monotonic()
            served.signal(signal.SIGTERM)
            call.join(30)
        assert served.proc.wait(30) == 0
        assert replies and replies[0].impressions_recorded == 3000
        assert answered[0] > signalled  # it was still in flight when the signal came
        markers = list(client.scan_iter(match=f"{prefix}:*:i:*", count=10_000))
        marked = sum(int(client.strlen(k)) for k in markers) // FP_BYTES  # one fingerprint each
        assert marked == 3000  # every impression of the in-flight call is in the store
        with grpc.insecure_channel(served.target()) as channel, pytest.raises(grpc.RpcError):
            pb_grpc.AdMatchingStub(channel).RecordEvents(_events(1), timeout=2)  # gone
    finally:
        served.kill_all()
        for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
            client.delete(key)


def test_two_workers_share_the_port_and_the_store(
    launch: Launch, model_dir: Path, tmp_path: Path
) -> None:
    """--workers 2: both answer on one port (SO_REUSEPORT) and see the same cap store."""
    served = launch(model_dir, config_file(tmp_path), workers=2)
    try:
        served.ready()
        assert len(every_worker(served.target(), 2)) == 2
        recorded = []
        for _ in range(6):  # the same impression through fresh connections: counted once
            with grpc.insecure_channel(
                served.target(), options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                reply = pb_grpc.AdMatchingStub(channel).RecordEvents(_events(1), timeout=10)
                recorded.append(reply.impressions_recorded)
        assert sum(recorded) == 1
        assert served.stop() == 0
    finally:
        served.kill_all()
