"""What a replay sends its requests to: the engine in this process, or a server over gRPC.

Both take requests in log order, decide them, and record each request's exposure events the
way production would (after the decision), so caps and fatigue evolve as the replay goes.

In process, a worker's whole path runs except the network, through the server's own code:
each request arrives as the bytes of a ``ScoreRequest`` message, is decoded by the servicer's
decoder (validated once, there), and joins one pass of the server's batcher code over its batch
(``App.decide_pass``: ``batch`` requests, as the batcher merges concurrent calls; one cap read,
one scoring pass); the decision is encoded back to bytes, and the batch's events are recorded
in one call. With ``batch=1`` it is the one-request-at-a-time path. With ``reserve``
the selected ads' caps are reserved atomically after scoring (the server's ``reserve_caps``),
which also records their impressions: requests of one user in one batch cannot then both take
the last slot of a cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from admatch.v1 import admatch_pb2 as pb
from engine.app import Admitted, App
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
        """One pass of the server's code over ``group`` (``App.decide_pass``): each request
        as the bytes of its message, decoded by the servicer's decoder (validated once, there),
        one cap read, one scoring pass, reserved (``reserve``) and encoded."""
        wire = [request_to_proto(r).SerializeToString() for r in group]  # the client's part
        results = [Result(None, None, 0.0) for _ in group]
        works = []
        for blob, result in zip(wire, results, strict=True):
            timer = CallbackTimer(_adder(result.stages))  # decode, reserve, encode: its own
            admit = partial(self._admit, blob, timer)
            works.append(self.app.work(admit, partial(_encode, timer), timer))
        shared: dict[str, float] = {}  # caps, features, model, rank: the pass's
        outcomes = self.app.decide_pass(works, CallbackTimer(_adder(shared)))
        for result, outcome in zip(results, outcomes, strict=True):
            if isinstance(outcome, AdmatchError):
                result.fail(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                result.decision = outcome
                result.stages.update(shared)
            result.latency_s = sum(result.stages.values())
        self._busy += sum(shared.values()) + sum(
            v for r in results for k, v in r.stages.items() if k not in shared
        )
        return results

    def _admit(self, blob: bytes, timer: CallbackTimer) -> Admitted:
        with timer.stage("decode"):
            request = decode_request(pb.ScoreRequest.FromString(blob), self.limits)
        return Admitted(request, self.reserve, log=False)

    def close(self) -> None:
        """Close the app (its cap store, and an embedded Redis)."""
        self.app.close()


def _encode(timer: CallbackTimer, decision: Decision) -> Decision:
    """The servicer's encoding, timed (the replay keeps the decision itself)."""
    with timer.stage("encode"):
        decision_to_wire(decision)
    return decision


def _adder(stages: dict[str, float]) -> Callable[[str, float], None]:
    def observe(name: str, seconds: float) -> None:
        stages[name] = stages.get(name, 0.0) + seconds

    return observe
