"""Batching across requests: concurrent decisions merged into one pass decide as alone."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine import batching
from engine.app import App, build_app
from engine.batching import Batcher, Prepared
from engine.caps.gate import CapGate
from engine.caps.plan import Plan
from engine.caps.store import CapReading, CapStore, Impression, StoreUnavailable
from engine.config import load_config
from engine.deadline import Deadline
from engine.errors import AdmatchError, DeadlineExceeded, InvalidArgument
from engine.replay.causal import causal_batches
from engine.replay.engines import InProcessEngine
from engine.rpc.convert import request_to_proto
from engine.rpc.decode import decode_request
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, Reason, ScoreRequest
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


def build(model_dir: Path, window_ms: float, batch_max: int) -> App:
    config = load_config()
    config = config.model_copy(
        update={
            "store": config.store.model_copy(update={"url": "memory://"}),
            "server": config.server.model_copy(
                update={"batch_window_ms": window_ms, "batch_max": batch_max}
            ),
        }
    )
    return build_app(config, model_dir)


@pytest.fixture
def apps(model_dir: Path) -> Iterator[tuple[App, App]]:
    batched, plain = build(model_dir, 20.0, 8), build(model_dir, 0.0, 1)
    assert plain._batcher is None
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
    serving = build_server(batched, batched.scorer.config.server.model_copy(update={"port": 0}))
    port = serving.port
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
        serving.stop(1)


class FlakyScorer:
    """Fails any batch holding the request with id ``bad``; decides the rest with ``inner``."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner

    def score_batch(self, reqs: Sequence[ScoreRequest], timer: Any = NULL_TIMER) -> list[Decision]:
        if any(r.context.request_id == "bad" for r in reqs):
            raise InvalidArgument("requests[0].candidates", "rejected by the test")
        return self.inner.score_batch(reqs, timer)


class Plain:
    """Work that scores a request with a given scorer and gate; ``hold`` (if given) blocks its
    ``prepare``."""

    def __init__(
        self,
        scorer: Any,
        gate: CapGate,
        request: ScoreRequest,
        hold: threading.Event | None = None,
    ):
        self.scorer, self.gate, self.request, self.hold = scorer, gate, request, hold
        self.prepared_in: int | None = None

    def prepare(self) -> Prepared:
        self.prepared_in = threading.get_ident()
        if self.hold is not None:
            assert self.hold.wait(10)
        if self.request.context.request_id == "bad-prepare":
            raise InvalidArgument("request_id", "rejected before scoring by the test")
        return Prepared(self.scorer, self.gate, self.request, Deadline(10))

    def complete(self, decision: Decision) -> Decision:
        if decision.request_id == "bad-complete":
            raise InvalidArgument("request_id", "rejected after scoring by the test")
        return decision


class Served:
    """The server's work for a request (``App.decision_work``), with its request for naming."""

    def __init__(self, app: App, request: ScoreRequest, deadline: Deadline) -> None:
        self.request = request
        self.work = app.decision_work(request, deadline=deadline)

    def prepare(self) -> Prepared:
        return self.work.prepare()

    def complete(self, decision: Decision) -> Decision:
        return self.work.complete(decision)


def renamed(request: ScoreRequest, request_id: str) -> ScoreRequest:
    context = dataclasses.replace(request.context, request_id=request_id)
    return dataclasses.replace(request, context=context)


def run_all(batcher: Batcher, works: Sequence[Plain | Served]) -> dict[str, Any]:
    """Each work's outcome (or error) by request id, each from a thread of its own."""
    results: dict[str, Any] = {}

    def call(work: Plain | Served) -> None:
        try:
            results[work.request.context.request_id] = batcher.run(work, NULL_TIMER, Deadline(10))
        except AdmatchError as exc:
            results[work.request.context.request_id] = exc

    threads = [threading.Thread(target=call, args=(w,)) for w in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_each_request_is_validated_once(
    apps: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its cap-store read, not again in the pass (batched or alone); over gRPC and in
    the replay the decoder validates every field (naming the message's), and nothing after it
    again. (The JSON requests are validated as they are read, before the count.)"""
    reqs = requests(2)
    calls: list[str] = []
    validate = ScoreRequest.validate

    def counting(self: ScoreRequest, where: str = "request") -> None:
        calls.append(self.context.request_id)
        validate(self, where)

    monkeypatch.setattr(ScoreRequest, "validate", counting)
    batched, plain = apps
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(batched.decide, reqs))
    for r in reqs:
        plain.decide(r)
    serving = build_server(batched, batched.scorer.config.server.model_copy(update={"port": 0}))
    port = serving.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            pb_grpc.AdMatchingStub(ch).Score(request_to_proto(reqs[0]), timeout=10)
    finally:
        serving.stop(1)
    replay = InProcessEngine(plain, batch=2)  # the replay: by the servicer's decoder alone
    assert all(r.decision for r in replay.decide(reqs, lambda i, d: ([], [])))
    ids = [r.context.request_id for r in reqs]
    assert sorted(calls) == sorted([*ids, *ids])  # the gRPC request: by the decoder alone
    with pytest.raises(InvalidArgument):  # still validated
        plain.decide(dataclasses.replace(reqs[0], candidates={**reqs[0].candidates, "ad_id": []}))


def test_the_replay_decides_through_the_servers_pass(
    apps: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process replay runs the server's own pass (``engine.batching.run_pass``, through
    ``App.decide_pass``) once per batch, with the work ``App.work`` builds, and decides as the
    app decides each request alone."""
    batched, plain = apps
    passes: list[int] = []
    run_pass = batching.run_pass

    def spy(jobs: list[Any], timer: Any) -> None:
        passes.append(len(jobs))
        run_pass(jobs, timer)

    monkeypatch.setattr(batching, "run_pass", spy)
    reqs = requests(1)
    results = InProcessEngine(batched, batch=2).decide(reqs, lambda i, d: ([], []))
    assert passes == [len(s) for s in causal_batches(reqs, 2)] and max(passes) == 2
    alone = [plain.decide(decode_request(request_to_proto(q))) for q in reqs]  # as sent
    decided = [r.decision for r in results]
    assert all(d is not None and same(d, a) for d, a in zip(decided, alone, strict=True))
    assert all({"decode", "caps", "rank", "encode"} <= set(r.stages) for r in results)


def test_one_bad_request_fails_alone(apps: tuple[App, App]) -> None:
    batched, _ = apps
    scorer: Any = FlakyScorer(batched.scorer)
    good = requests(1)
    batcher = Batcher(0.2, len(good) + 3)  # the window gathers all of them into one pass
    bad = [renamed(good[0], name) for name in ("bad", "bad-prepare", "bad-complete")]
    results = run_all(batcher, [Plain(scorer, batched.gate, r) for r in [*good, *bad]])
    for name in ("bad", "bad-prepare", "bad-complete"):
        assert isinstance(results.pop(name), InvalidArgument), name
    assert all(isinstance(d, Decision) for d in results.values()) and len(results) == len(good)
    assert batcher.batches == 1  # they did share the pass that failed


def leading(
    app: App, batcher: Batcher, request: ScoreRequest
) -> tuple[threading.Event, threading.Thread, Plain]:
    """A caller whose request leads a pass of its own at once and is held in ``prepare``
    until the returned event is set."""
    hold = threading.Event()
    first = Plain(app.scorer, app.gate, request, hold)
    caller = threading.Thread(target=lambda: batcher.run(first, NULL_TIMER, Deadline(10)))
    caller.start()
    while first.prepared_in is None:
        time.sleep(0.001)
    return hold, caller, first


def test_without_a_window_a_pass_takes_what_queued_meanwhile(apps: tuple[App, App]) -> None:
    batched, plain = apps
    batcher = Batcher(0.0, 8)
    reqs = requests(1)
    hold, caller, first = leading(batched, batcher, reqs[0])
    assert first.prepared_in == caller.ident  # ... in its own thread, no hand-off
    others = [Plain(batched.scorer, batched.gate, r) for r in reqs[1:]]
    results: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: results.update(run_all(batcher, others)))
    waiting.start()
    while len(batcher._queue) < len(others):  # the others queue up meanwhile
        time.sleep(0.001)
    hold.set()
    caller.join()
    waiting.join()
    assert (batcher.batches, batcher.requests) == (2, len(reqs))  # one pass for all the others
    assert all(same(results[r.context.request_id], plain.decide(r)) for r in reqs[1:])
    assert len({w.prepared_in for w in others}) == 1  # prepared by the pass's leader


def test_a_window_waits_for_as_many_as_the_recent_passes_took(apps: tuple[App, App]) -> None:
    """With a window, a leader waits for as many requests as the largest of the last passes
    (at first a full pass), then starts at once; after small passes (light load) it does not
    wait at all: here neither waits out a minute's window."""
    batched, plain = apps
    batcher = Batcher(0.05, 16)
    reqs = requests(2)[:9]
    assert batcher.target == 16  # at first: a full pass, or the window

    def one_pass(n: int) -> None:
        jobs = [batcher.submit(Plain(batched.scorer, batched.gate, r)) for r in reqs[:n]]
        out: list[Any] = [None] * n

        def wait(i: int) -> None:
            out[i] = batcher.wait(jobs[i], NULL_TIMER, Deadline(120))

        threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        end = time.monotonic() + 20  # far less than the window below, far more than a pass
        for t in threads:
            t.join(timeout=max(end - time.monotonic(), 0))
        assert not any(t.is_alive() for t in threads), "the pass waited out its window"
        assert all(same(d, plain.decide(r)) for d, r in zip(out, reqs, strict=False))

    def passes() -> tuple[int, int]:
        return batcher.batches, batcher.requests

    # passes of 9, then 9 queued: as many as the recent passes, at once; passes of 3, then 1
    # queued: light load, no wait
    for n, then in ((9, 9), (3, 1)):
        for _ in range(batching.RECENT_PASSES):  # each waits up to 50 ms for more
            one_pass(n)
        assert batcher.target == n
        window, batcher.window_s = batcher.window_s, 60.0
        before = passes()
        one_pass(then)
        assert passes() == (before[0] + 1, before[1] + then)
        batcher.window_s = window


def test_a_queued_request_past_its_deadline_is_withdrawn(apps: tuple[App, App]) -> None:
    batched, _ = apps
    batcher = Batcher(0.0, 8)
    reqs = requests(1)
    hold, caller, _ = leading(batched, batcher, reqs[0])
    late = Plain(batched.scorer, batched.gate, reqs[1])
    with pytest.raises(DeadlineExceeded, match="exceeded before scoring finished"):
        batcher.run(late, NULL_TIMER, Deadline(0.05))
    hold.set()
    caller.join()
    assert late.prepared_in is None and len(batcher._queue) == 0  # never prepared, not queued
    assert batcher.requests == 1


def test_a_streams_messages_share_passes(apps: tuple[App, App]) -> None:
    batched, plain = apps
    serving = build_server(batched, batched.scorer.config.server.model_copy(update={"port": 0}))
    port = serving.port
    try:
        reqs = requests(2)
        batcher = batched._batcher
        assert batcher is not None
        before = batcher.batches
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            replies = list(  # the client sends them all without waiting for answers
                pb_grpc.AdMatchingStub(ch).ScoreStream(iter([request_to_proto(r) for r in reqs]))
            )
        assert [r.request_id for r in replies] == [r.context.request_id for r in reqs]
        for reply, req in zip(replies, reqs, strict=True):
            assert list(reply.selected_ad_ids) == plain.decide(req).selected
        assert batcher.batches - before < len(reqs)
    finally:
        serving.stop(1)


def test_a_bad_stream_message_gets_its_own_error_and_the_stream_goes_on(
    apps: tuple[App, App],
) -> None:
    """One bad message used to end the whole stream ("touchpoint: required", no index) and the
    valid ones after it got no answer. Now it gets a response of its own whose ``error`` names
    the field (with the standard BadRequest detail), and every message is answered in order."""
    from google.rpc import error_details_pb2

    batched, plain = apps
    serving = build_server(batched, batched.scorer.config.server.model_copy(update={"port": 0}))
    try:
        reqs = requests(1)
        messages = [request_to_proto(r) for r in reqs]
        messages[2].touchpoint = pb.TOUCHPOINT_UNSPECIFIED  # required
        with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as ch:
            stub = pb_grpc.AdMatchingStub(ch)
            replies = list(stub.ScoreStream(iter(messages), timeout=10))
        assert [r.request_id for r in replies] == [m.request_id for m in messages]
        bad = replies[2]
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad.error.message == "touchpoint: required" and not bad.decisions
        detail = error_details_pb2.BadRequest()
        assert bad.error.details[0].Unpack(detail)
        assert [(v.field, v.description) for v in detail.field_violations] == [
            ("touchpoint", "required")
        ]
        for i, (reply, req) in enumerate(zip(replies, reqs, strict=True)):
            if i != 2:
                assert not reply.HasField("error")
                assert list(reply.selected_ad_ids) == plain.decide(req).selected
    finally:
        serving.stop(1)


class SpyStore:
    """A cap store that notes the reads it is asked for; ``before_read`` runs first (to move
    a test clock), and ``down`` makes every read fail as a store that does not answer."""

    def __init__(self, inner: CapStore, before_read: Any = None, down: bool = False) -> None:
        self.inner, self.before_read, self.down = inner, before_read, down
        self.reads: list[tuple[str, int]] = []  # (method, plans)
        self.budgets: list[float | None] = []  # how long each read was allowed to wait

    def read(self, plan: Plan, budget_s: float | None = None) -> CapReading:
        self.reads.append(("read", 1))
        self.budgets.append(budget_s)
        if self.before_read is not None:
            self.before_read()
        if self.down:
            raise StoreUnavailable("down for the test")
        return self.inner.read(plan, budget_s)

    def read_many(
        self, plans: Sequence[Plan], budget_s: float | None = None
    ) -> list[CapReading | AdmatchError]:
        self.reads.append(("read_many", len(plans)))
        self.budgets.append(budget_s)
        if self.before_read is not None:
            self.before_read()
        if self.down:
            return [StoreUnavailable("down for the test") for _ in plans]
        return self.inner.read_many(plans, budget_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_history(app: App) -> None:
    """Exposures for the exemplary requests' user in the last hour: three of the first
    request's first campaign (the shipped daily cap per user and campaign is three), two of
    the last one's."""
    reqs = requests(1)
    impressions = []
    for k, times in ((0, 3), (len(reqs) - 1, 2)):
        ctx, cands = reqs[k].context, reqs[k].candidates
        for j in range(times):
            impressions.append(
                Impression(
                    f"hist-{k}-{j}",
                    ctx.ts - timedelta(minutes=10 + 10 * j),
                    ctx.user_id,
                    ctx.touchpoint,
                    ctx.slot,
                    str(cands["ad_id"][0]),
                    ctx.household_id,
                    ctx.device_id,
                    str(cands["creative_id"][0]),
                    str(cands["campaign_id"][0]),
                    str(cands["advertiser_id"][0]),
                    str(cands["category"][0]),
                )
            )
    assert app.store.record(impressions) == len(impressions)


def decide_all(app: App, batcher: Batcher, reqs: list[ScoreRequest]) -> dict[str, Any]:
    """The requests decided as the server does (``App.decision_work``), in passes of
    ``batcher``."""
    return run_all(batcher, [Served(app, r, Deadline(10)) for r in reqs])


def test_a_pass_reads_the_store_once_and_decides_as_requests_read_alone(
    apps: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``read_many`` for the pass; a request that fails validation is not read and fails
    alone; the others' exposures and caps are those a read of their own gives."""
    batched, plain = apps
    with_history(batched)
    with_history(plain)
    spy = SpyStore(batched.store)
    monkeypatch.setattr(batched.gate, "store", spy)
    good = requests(1)
    invalid = renamed(good[0], "invalid")
    invalid = dataclasses.replace(invalid, context=dataclasses.replace(invalid.context, slot="x"))
    results = decide_all(batched, Batcher(0.2, 8), [*good, invalid])
    assert spy.reads == [("read_many", len(good))]
    assert isinstance(results.pop("invalid"), InvalidArgument)
    alone = {r.context.request_id: plain.decide(r) for r in good}
    assert all(same(results[k], alone[k]) for k in alone)
    capped = [k for k, d in alone.items() if Reason.FREQUENCY_CAPPED in d.reason]
    assert capped, "the history caps a candidate: the comparison covers caps"


def test_deadlines_are_checked_before_the_read_and_before_scoring(
    apps: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    batched, plain = apps
    now = [0.0]

    def read_takes_two_seconds() -> None:
        now[0] += 2.0

    spy = SpyStore(batched.store, before_read=read_takes_two_seconds)
    monkeypatch.setattr(batched.gate, "store", spy)
    reqs = requests(1)[:3]
    budgets = {"spent": 0.0, "ends during the read": 1.0, "in time": 10.0}
    works = []
    for (name, budget), request in zip(budgets.items(), reqs, strict=True):
        work = Served(batched, renamed(request, name), Deadline(budget, lambda: now[0]))
        works.append(work)
    results = run_all(Batcher(0.2, 8), works)
    assert spy.reads == [("read_many", 2)]  # the spent one is not read
    assert spy.budgets == [10.0]  # the read may wait as long as the most patient has left
    assert str(results["spent"]) == "deadline of 0 ms exceeded before caps"
    assert str(results["ends during the read"]) == "deadline of 1000 ms exceeded before scoring"
    assert same(results["in time"], plain.decide(renamed(reqs[2], "in time")))


@pytest.mark.parametrize("fail_open", [False, True], ids=["closed", "open"])
def test_a_store_that_does_not_answer_fails_each_request_of_the_pass(
    apps: tuple[App, App], fail_open: bool
) -> None:
    """Closed: every candidate a rule applies to is refused with CAP_STORE_UNAVAILABLE, not
    FREQUENCY_CAPPED (the shipped rules cover every candidate: nothing is shown); open:
    nothing is refused. Each request counts as one cap-store error, as if read alone."""
    batched, _ = apps
    config = batched.scorer.config
    gate = CapGate(SpyStore(batched.store, down=True), config.caps, 7 * 86_400, fail_open)
    reqs = requests(1)
    results = run_all(Batcher(0.2, 8), [Plain(batched.scorer, gate, r) for r in reqs])
    assert gate.store.reads == [("read_many", len(reqs))]  # type: ignore[attr-defined]
    assert gate.errors == len(reqs)
    for decision in results.values():
        assert isinstance(decision, Decision)
        assert Reason.FREQUENCY_CAPPED not in decision.reason  # no cap was seen
        if not fail_open:  # not capped: the caps are unknown
            assert Reason.CAP_STORE_UNAVAILABLE in decision.reason
            assert decision.selected == []


def test_after_a_reload_a_pass_reads_once_per_gate(apps: tuple[App, App]) -> None:
    """Requests prepared with the gate before a reload and with the one after share a pass;
    each is read through its own gate."""
    batched, plain = apps
    config = batched.scorer.config
    old, new = (CapGate(SpyStore(batched.store), config.caps, 7 * 86_400, False) for _ in range(2))
    reqs = requests(1)
    works = [Plain(batched.scorer, old if k % 2 else new, r) for k, r in enumerate(reqs)]
    results = run_all(Batcher(0.2, 8), works)
    assert old.store.reads == [("read_many", len(reqs) // 2)]  # type: ignore[attr-defined]
    assert new.store.reads == [("read_many", len(reqs) - len(reqs) // 2)]  # type: ignore[attr-defined]
    assert all(same(results[r.context.request_id], plain.decide(r)) for r in reqs)
