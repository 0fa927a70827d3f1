"""Batching across requests: concurrent decisions merged into one pass decide as alone."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App, build_app
from engine.batching import Batcher
from engine.config import load_config
from engine.deadline import Deadline
from engine.errors import InvalidArgument
from engine.rpc.convert import request_to_proto
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import NULL_TIMER

EXEMPLARY = sorted(
    (Path(__file__).resolve().parents[1] / "golden" / "scoring" / "exemplary").glob("*.json")
)


def requests(copies: int) -> list[ScoreRequest]:
    out = []
    for path in EXEMPLARY:
        doc = json.loads(path.read_text())["request"]
        for i in range(copies):
            out.append(request_from_json({**doc, "request_id": f"{doc['request_id']}-{i}"}))
    return out


def build(model_dir: Path, window_ms: float) -> App:
    config = load_config()
    config = config.model_copy(
        update={
            "store": config.store.model_copy(update={"url": "memory://"}),
            "server": config.server.model_copy(
                update={"batch_window_ms": window_ms, "batch_max": 8}
            ),
        }
    )
    return build_app(config, model_dir)


@pytest.fixture
def apps(model_dir: Path) -> Iterator[tuple[App, App]]:
    batched, plain = build(model_dir, 20.0), build(model_dir, 0.0)
    yield batched, plain
    batched.close()
    plain.close()


def same(a: Decision, b: Decision) -> bool:
    return (
        a.request_id == b.request_id
        and a.selected == b.selected
        and list(a.reason) == list(b.reason)
        and np.allclose(a.utility, b.utility)
    )


def test_concurrent_decisions_are_merged_and_equal_unbatched(apps: tuple[App, App]) -> None:
    batched, plain = apps
    reqs = requests(4)  # 20 requests, 8 threads: batches of several
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(batched.decide, reqs))
    assert all(same(g, plain.decide(r)) for g, r in zip(got, reqs, strict=True))
    batcher = batched._batcher
    assert batcher is not None and batcher.requests == len(reqs)
    assert batcher.batches < len(reqs)  # some requests shared a pass


def test_batching_over_grpc_gives_the_in_process_answers(apps: tuple[App, App]) -> None:
    batched, plain = apps
    server, port = build_server(
        batched, batched.scorer.config.server.model_copy(update={"port": 0})
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            reqs = requests(3)
            with ThreadPoolExecutor(6) as pool:
                replies = list(
                    pool.map(lambda r: stub.Score(request_to_proto(r), timeout=10), reqs)
                )
        for reply, req in zip(replies, reqs, strict=True):
            expected = plain.decide(req)
            assert reply.request_id == expected.request_id
            assert list(reply.selected_ad_ids) == expected.selected
    finally:
        server.stop(grace=1).wait()


class FlakyScorer:
    """Fails any batch holding the request with id ``bad``; decides the rest with ``inner``."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner

    def score_batch(self, reqs: Sequence[ScoreRequest], timer: Any = NULL_TIMER) -> list[Decision]:
        if any(r.context.request_id == "bad" for r in reqs):
            raise InvalidArgument("requests[0].candidates", "rejected by the test")
        return self.inner.score_batch(reqs, timer)


def test_one_bad_request_fails_alone(apps: tuple[App, App]) -> None:
    batched, _ = apps
    scorer: Any = FlakyScorer(batched.scorer)
    batcher = Batcher(0.2, 8)
    reqs = requests(1)
    bad = dataclasses.replace(
        reqs[0], context=dataclasses.replace(reqs[0].context, request_id="bad")
    )
    results: dict[str, Any] = {}

    def call(req: ScoreRequest) -> None:
        try:
            results[req.context.request_id] = batcher.score(scorer, req, NULL_TIMER, Deadline(10))
        except InvalidArgument as exc:
            results[req.context.request_id] = exc

    threads = [threading.Thread(target=call, args=(r,)) for r in [*reqs, bad]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert isinstance(results.pop("bad"), InvalidArgument)
    assert all(isinstance(d, Decision) for d in results.values()) and len(results) == len(reqs)
    assert batcher.batches == 1  # they did share the pass that failed
