"""What a replay sends its requests to: the engine in this process, or a server over gRPC.

Both take requests in log order, decide them, and record each request's exposure events the
way production would (after the decision), so caps and fatigue evolve as the replay goes.

In process, a worker's whole path runs except the network: each request arrives as the bytes
of a ``ScoreRequest`` message, is decoded by the servicer's own conversion, reads the cap store,
and waits for one scoring pass over its batch (``batch`` requests, as the server's batcher
merges concurrent calls); the decision is encoded back to bytes, and the batch's events are
recorded in one call. With ``batch=1`` it is the one-request-at-a-time path. With ``reserve``
the selected ads' caps are reserved atomically after scoring (the server's ``reserve_caps``),
which also records their impressions: requests of one user in one batch cannot then both take
the last slot of a cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from admatch.v1 import admatch_pb2 as pb
from engine.app import App
from engine.caps.store import Feedback, Impression
from engine.errors import AdmatchError
from engine.replay.causal import causal_batches
from engine.replay.requests import Events
from engine.rpc.convert import decision_to_wire, request_to_proto
from engine.rpc.decode import decode_request
from engine.rpc.limits import Limits
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import CallbackTimer

STAGES = ("decode", "caps", "features", "model", "rank", "reserve", "encode")
EventsOf = Callable[[int, Decision | None], Events]


@dataclass
class Result:
    """One request's outcome.

    Attributes:
        decision: the decision (``None`` when the request failed).
        error: the gRPC status name of the failure, ``None`` on success.
        latency_s: from the request's arrival to its encoded answer.
        message: the failure's message (as the status' details carry it).
        stages: seconds the request spent (or waited, for its batch's passes) per stage.
    """

    decision: Decision | None
    error: str | None
    latency_s: float
    stages: dict[str, float] = field(default_factory=dict)
    message: str | None = None

    def fail(self, exc: AdmatchError) -> None:
        """Record ``exc`` as this request's failure."""
        self.error, self.message = exc.status, str(exc)


class ReplayEngine(Protocol):
    """Decides requests in order and records their events as production would."""

    name: str

    def decide(self, requests: Sequence[ScoreRequest], events_of: EventsOf) -> list[Result]:
        """Decide ``requests`` (in order); after each decision, record
        ``events_of(i, decision)`` for request ``i`` of this call. One result per request."""
        ...

    def busy_seconds(self) -> float:
        """Seconds the engine itself worked so far (in process) or 0 (remote)."""
        ...

    def close(self) -> None:
        """Release what the engine holds."""
        ...


class InProcessEngine:
    """The scoring core and cap store of an :class:`App` in this process."""

    name = "in-process"

    def __init__(self, app: App, batch: int, reserve: bool = False) -> None:
        self.app = app
        self.batch = max(1, batch)
        self.reserve = reserve
        self.limits = Limits.from_config(app.scorer.config.server)  # the server's bounds
        self.batches = 0
        self.record_errors: dict[str, int] = {}  # gRPC status name -> failed record calls
        self._busy = 0.0

    @property
    def cap_read_errors(self) -> int:
        """Cap-store reads that failed or timed out (their requests failed closed or open)."""
        return self.app.cap_errors

    def busy_seconds(self) -> float:
        """See :class:`ReplayEngine`."""
        return self._busy

    def decide(self, requests: Sequence[ScoreRequest], events_of: EventsOf) -> list[Result]:
        """See :class:`ReplayEngine`."""
        out: list[Result] = []
        for span in causal_batches(requests, self.batch):
            k, group = span.start, requests[span.start : span.stop]
            self.batches += 1
            results = self._batch(group)
            start = time.perf_counter()
            impressions: list[Impression] = []
            feedback: list[Feedback] = []
            for i, r in enumerate(results):
                imp, fb = events_of(k + i, r.decision)
                impressions += imp
                feedback += fb
            if impressions or feedback:
                try:
                    self.app.record(impressions, feedback)
                except AdmatchError as exc:  # counted, as the gRPC engine counts them
                    self.record_errors[exc.status] = self.record_errors.get(exc.status, 0) + 1
            self._busy += time.perf_counter() - start
            out += results
        return out

    def _batch(self, group: Sequence[ScoreRequest]) -> list[Result]:
        wire = [request_to_proto(r).SerializeToString() for r in group]  # the client's part
        results = [Result(None, None, 0.0) for _ in group]
        decoded: list[tuple[int, ScoreRequest]] = []
        for i, blob in enumerate(wire):
            timer = CallbackTimer(_adder(results[i].stages))
            try:
                with timer.stage("decode"):
                    request = decode_request(pb.ScoreRequest.FromString(blob), self.limits)
                decoded.append((i, request))
            except AdmatchError as exc:
                results[i].fail(exc)
        shared: dict[str, float] = {}
        pass_timer = CallbackTimer(_adder(shared))
        with pass_timer.stage("caps"):  # one read for the batch, as the server's pass
            read = self.app.gate.prepare_many([r for _, r in decoded])
        prepared: list[tuple[int, ScoreRequest]] = []
        for (i, _), outcome in zip(decoded, read, strict=True):
            if isinstance(outcome, AdmatchError):
                results[i].fail(outcome)
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                prepared.append((i, outcome))
        decisions = self._score([r for _, r in prepared], pass_timer)
        for (i, request), decision in zip(prepared, decisions, strict=True):
            stages = results[i].stages
            stages.update(shared)
            if isinstance(decision, AdmatchError):
                results[i].fail(decision)
                continue
            if self.reserve:
                start = time.perf_counter()
                decision = self.app.reserve(request, decision)
                stages["reserve"] = time.perf_counter() - start
            start = time.perf_counter()
            decision_to_wire(decision)
            stages["encode"] = time.perf_counter() - start
            results[i].decision = decision
        for r in results:
            r.latency_s = sum(r.stages.values())
        self._busy += sum(shared.values()) + sum(
            v for r in results for k, v in r.stages.items() if k not in shared
        )
        return results

    def _score(
        self, requests: list[ScoreRequest], timer: CallbackTimer
    ) -> list[Decision | AdmatchError]:
        """One pass over the batch; if it fails, each request alone (one bad request fails
        alone, as in the server's batcher)."""
        if not requests:
            return []
        scorer = self.app.scorer
        try:
            return list(scorer.score_batch(requests, timer))
        except AdmatchError as exc:
            if len(requests) == 1:
                return [exc]
        out: list[Decision | AdmatchError] = []
        for r in requests:
            try:
                out.append(scorer.score(r, timer))
            except AdmatchError as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        """Close the app (its cap store, and an embedded Redis)."""
        self.app.close()


def _adder(stages: dict[str, float]) -> Callable[[str, float], None]:
    def observe(name: str, seconds: float) -> None:
        stages[name] = stages.get(name, 0.0) + seconds

    return observe
