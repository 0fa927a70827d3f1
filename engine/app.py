"""The composition root: one place that wires config, cap store, gate and scorer together.

``build_app(config, model_dir)`` opens the cap store the config names and loads the model;
``App`` is what a transport (the gRPC servicer, a replay) calls. It holds no transport types.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from engine.batching import Batcher, Call, Job, Prepared, Work, one_pass, run_alone
from engine.caps.breaker import GuardedStore
from engine.caps.connect import open_store
from engine.caps.gate import CapGate, Reservation
from engine.caps.rules import parse_duration
from engine.caps.store import Feedback, Impression
from engine.config import AdmatchConfig, load_config
from engine.deadline import NO_DEADLINE, Deadline
from engine.logs.decisions import EventRecord
from engine.logs.serving import ServingLogs
from engine.model.bundle import ModelBundle
from engine.scoring.scorer import Scorer
from engine.scoring.types import CODE, Decision, Reason, ScoreRequest, impression_id
from engine.timing import NULL_TIMER, StageTimer
from features.online import CandidateColumns, RequestContext

R = TypeVar("R")
_REFUSED = {
    Reservation.CAPPED: Reason.FREQUENCY_CAPPED,
    Reservation.BLOCKED: Reason.USER_BLOCKED,
    Reservation.SEPARATED: Reason.COMPETITIVE_SEPARATION,
    Reservation.UNAVAILABLE: Reason.CAP_STORE_UNAVAILABLE,
}
_IMPRESSION_IDS = ("creative_id", "campaign_id", "advertiser_id", "category")


def _impression(ctx: RequestContext, ad: str, one: CandidateColumns) -> Impression:
    """The impression a reservation records for ad ``ad`` (id ``request_id:ad_id``)."""
    return Impression(
        impression_id(ctx.request_id, ad),
        ctx.ts,
        ctx.user_id,
        ctx.touchpoint,
        ctx.slot,
        ad,
        ctx.household_id,
        ctx.device_id,
        *(one.get(c, [None])[0] for c in _IMPRESSION_IDS),
    )


@dataclass(frozen=True)
class Admitted:
    """A request as it enters the core, validated once at its edge (the gRPC decoder, or
    ``ScoreRequest.validate`` for a request built in process), and what follows its decision:
    ``reserve`` its caps, ``log`` it (when the app keeps a decision log; not for a dry run),
    with ``wire``, the protobuf bytes the decision log keeps (``None``: it encodes them)."""

    request: ScoreRequest
    reserve: bool = False
    log: bool = True
    wire: bytes | None = None


@dataclass(frozen=True)
class Staged:
    """A model and config loaded by :meth:`App.stage`, not serving yet."""

    scorer: Scorer
    gate: CapGate
    model_dir: Path


@dataclass(frozen=True)
class Recorded:
    """What ``App.record`` did."""

    impressions_recorded: int
    duplicates: int
    feedback_applied: int


class App:
    """Decides and records; swaps model and config atomically on reload."""

    def __init__(
        self,
        config: AdmatchConfig,
        model_dir: Path,
        store: GuardedStore,
        logs: ServingLogs | None = None,
    ) -> None:
        """``logs``: the decision and event logs to write (none: no logs)."""
        self.store = store
        self.logs = logs
        self.model_dir = model_dir
        # the store's settings stay those it was opened with (a reload does not reopen it):
        # the gates plan by them and transports refuse times further ahead than it keeps,
        # whatever a reloaded config says (only fail_mode follows)
        self._store_settings = config.store
        self.max_ahead_s = parse_duration(config.store.max_ahead)
        self._lock = threading.Lock()
        self._committed: list[Callable[[], object]] = []
        self._scorer = Scorer(_loaded(model_dir), config)
        self._gate = self._make_gate(config)
        server = config.server
        self._batcher = (
            Batcher(server.batch_window_ms / 1000, server.batch_max)
            if server.batch_max > 1
            else None
        )

    def _make_gate(self, config: AdmatchConfig) -> CapGate:
        opened = self._store_settings
        retention = parse_duration(opened.retention)
        pods = frozenset(
            name
            for name, slot in config.slots.items()
            if slot.max_ads > 1 or slot.max_total_duration_s is not None
        )
        return CapGate(
            self.store,
            config.caps,
            retention,
            config.store.fail_mode == "open",
            pods,
        )

    @property
    def batch_max(self) -> int:
        """Requests decided in one scoring pass at most (1: no batching)."""
        return 1 if self._batcher is None else self._batcher.max_batch

    @property
    def batch_stats(self) -> tuple[int, int, int]:
        """Batching so far: passes run, requests decided in them, and the requests a pass
        now waits for (all 0 without batching)."""
        b = self._batcher
        return (0, 0, 0) if b is None else (b.batches, b.requests, b.target)

    @property
    def cap_errors(self) -> int:
        """Cap-store calls that failed or timed out so far."""
        return self._gate.errors

    @property
    def gate(self) -> CapGate:
        """The cap gate serving now (store and rules)."""
        return self._gate

    @property
    def scorer(self) -> Scorer:
        """The scorer serving now (model and config)."""
        return self._scorer

    def decide(
        self,
        request: ScoreRequest,
        reserve: bool = False,
        timer: StageTimer = NULL_TIMER,
        deadline: Deadline = NO_DEADLINE,
    ) -> Decision:
        """Read caps and exposures, score, and (``reserve``) atomically reserve the selected
        ads' caps, recording their impressions; an ad another server capped meanwhile is
        dropped with reason FREQUENCY_CAPPED. The deadline is checked between stages: once it
        has passed nothing more is done, in particular no cap is reserved for an answer the
        caller no longer waits for. With batching on, the request joins the next pass."""
        return self.run(self.decision_work(request, reserve, timer, deadline), timer, deadline)

    def decision_work(
        self,
        request: ScoreRequest,
        reserve: bool = False,
        timer: StageTimer = NULL_TIMER,
        deadline: Deadline = NO_DEADLINE,
    ) -> Work[Decision]:
        """``decide`` as work for a pass: the request validated before its cap read."""

        def admit() -> Admitted:
            request.validate()  # before spending a cap-store read on it
            return Admitted(request, reserve)

        return self.work(admit, _itself, timer, deadline)

    def work(
        self,
        admit: Callable[[], Admitted],
        encode: Callable[[Decision], R],
        timer: StageTimer = NULL_TIMER,
        deadline: Deadline = NO_DEADLINE,
    ) -> Work[R]:
        """One request's part of a pass, from a transport's two functions: ``admit`` decodes
        and validates it (before the pass, which reads the cap store for it); ``encode`` makes
        the answer of its decision, once it is reserved (``Admitted.reserve``) and logged.
        The request keeps the scorer and gate serving when it was admitted. ``timer`` times
        the reservation (stage "reserve")."""
        held: list[tuple[Admitted, CapGate]] = []

        def prepare() -> Prepared:
            admitted = admit()
            gate = self._gate
            held.append((admitted, gate))
            return Prepared(self._scorer, gate, admitted.request, deadline)

        def complete(decision: Decision) -> R:
            admitted, gate = held[-1]
            return encode(self._finish(admitted, gate, decision, timer, deadline))

        return Call(prepare, complete)

    def decide_pass(self, works: Sequence[Work[R]], timer: StageTimer) -> list[R | BaseException]:
        """``works`` in one pass in this thread, as a server's pass decides them (a replay's
        batches): one cap read, one scoring pass; each outcome, or the error that failed it
        alone."""
        return one_pass(works, timer)

    def _finish(
        self,
        admitted: Admitted,
        gate: CapGate,
        decision: Decision,
        timer: StageTimer,
        deadline: Deadline,
    ) -> Decision:
        """After the pass: reserve (the gate the request was prepared with), then log."""
        if admitted.reserve and decision.selected:
            deadline.check("reserving caps")
            with timer.stage("reserve"):
                decision = self._reserve(admitted.request, decision, gate, deadline)
        if admitted.log and self.logs is not None:
            reserved = admitted.reserve and decision.cap_store_ok
            self.logs.decision(admitted.request, decision, reserved, admitted.wire)
        return decision

    def run(self, work: Work[R], timer: StageTimer, deadline: Deadline) -> R:
        """Do ``work`` (what :meth:`work` or :meth:`decision_work` builds): in the next
        batched pass, or alone in this thread when batching is off."""
        return self.wait(self.submit(work), timer, deadline)

    def submit(self, work: Work[R]) -> Job[R]:
        """Queue ``work`` for the next pass without waiting (batching off: nothing is queued,
        ``wait`` does the work). A caller may submit several before waiting for the first."""
        return Job(work) if self._batcher is None else self._batcher.submit(work)

    def wait(self, job: Job[R], timer: StageTimer, deadline: Deadline) -> R:
        """The outcome of a submitted job (it may lead a pass in this thread)."""
        if self._batcher is None:
            return run_alone(job.work, timer)
        return self._batcher.wait(job, timer, deadline)

    def reserve(self, request: ScoreRequest, decision: Decision) -> Decision:
        """Atomically reserve the caps of ``decision``'s selected ads, recording their
        impressions (id ``request_id:ad_id``); an ad a cap refuses now (another request got
        there first) is dropped with reason FREQUENCY_CAPPED."""
        if not decision.selected:
            return decision
        return self._reserve(request, decision, self._gate)

    def _reserve(
        self,
        request: ScoreRequest,
        decision: Decision,
        gate: CapGate,
        deadline: Deadline = NO_DEADLINE,
    ) -> Decision:
        """Reserve the selected ads, in their order, in one round trip (a pod's ads count
        toward each other's caps; a refused one leaves the others theirs). The store is not
        asked when it has not answered for this request's cap read: every ad gets the fail
        mode's outcome at once, so a request waits for a dead store once."""
        ctx = request.context
        rank, codes, kept = decision.rank.copy(), decision.reason_code.copy(), []
        rows = [decision.ad_id.index(ad) for ad in decision.selected]
        ones = [{k: [v[i]] for k, v in request.candidates.items()} for i in rows]
        if decision.cap_store_ok:
            pairs = zip(decision.selected, ones, strict=True)
            impressions = [_impression(ctx, ad, one) for ad, one in pairs]
            outcomes = gate.reserve(
                ctx, ones, impressions, request.campaign_caps, deadline.remaining()
            )
        else:
            outcomes = [gate.unavailable() for _ in rows]
        store_ok = decision.cap_store_ok and not any(
            o in (Reservation.UNAVAILABLE, Reservation.UNRESERVED) for o in outcomes
        )
        for ad, i, outcome in zip(decision.selected, rows, outcomes, strict=True):
            if outcome in (Reservation.RESERVED, Reservation.UNRESERVED):
                kept.append(ad)
            else:
                rank[i], codes[i] = 0, CODE[_REFUSED[outcome]]
        rank[rank > 0] = np.argsort(np.argsort(rank[rank > 0])) + 1
        return dataclasses.replace(
            decision, selected=kept, rank=rank, reason_code=codes, cap_store_ok=store_ok
        )

    def record(
        self,
        impressions: list[Impression],
        feedback: list[Feedback],
        events: list[EventRecord] | None = None,
    ) -> Recorded:
        """Log ``events`` (every reported event, when the app keeps logs), then record the
        impressions (idempotent by impression id) and apply the negative feedback."""
        if events and self.logs is not None:
            self.logs.record(events)
        new = self.store.record(impressions)
        blocks = self.store.block(feedback) if feedback else 0
        return Recorded(new, len(impressions) - new, blocks)

    def stage(self, model_dir: Path | None = None, config_path: Path | None = None) -> Staged:
        """Load a model (``None``: the current directory again) and config (``None``: keep
        the current one), ready to :meth:`commit`; nothing changes yet.

        Raises:
            ModelError, ConfigError: either is broken (what serves stays as it is).
        """
        config = load_config(config_path) if config_path else self._scorer.config
        directory = model_dir or self.model_dir
        scorer = Scorer(_loaded(directory), config)
        return Staged(scorer, self._make_gate(config), directory)

    def commit(self, staged: Staged) -> None:
        """Serve what :meth:`stage` loaded (requests in flight finish on what they began with);
        then tell the listeners (:meth:`after_commit`)."""
        with self._lock:
            # the store writes by the new cap rules before any request is planned by them
            self.store.configure(staged.scorer.config.caps)
            self._scorer, self._gate, self.model_dir = staged.scorer, staged.gate, staged.model_dir
        for listener in self._committed:
            listener()

    def after_commit(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` after each commit (health, metrics: the fail mode may change)."""
        self._committed.append(listener)

    def reload(self, model_dir: Path | None = None, config_path: Path | None = None) -> None:
        """Load a model (and config) and serve it; raise and keep the current ones if either
        is broken (:meth:`stage`, then :meth:`commit`)."""
        self.commit(self.stage(model_dir, config_path))

    @property
    def store_up(self) -> bool:
        """False while the cap store's circuit is open (it stopped answering)."""
        return self.store.breaker.up

    def close(self) -> None:
        """Finish batched work, close the logs (finalising their files) and the cap store
        (and stop an embedded Redis)."""
        if self._batcher is not None:
            self._batcher.close()
        if self.logs is not None:
            self.logs.close()
        self.store.close()


def _itself(decision: Decision) -> Decision:
    return decision


def build_app(config: AdmatchConfig, model_dir: Path) -> App:
    """Open the configured cap store, load the model, and start the decision and event logs
    when ``decision_log.dir`` names a directory."""
    store = open_store(config)
    try:
        logs = ServingLogs(config.decision_log, config.server) if config.decision_log.dir else None
        return App(config, model_dir, store, logs)
    except Exception:
        store.close()
        raise


def _loaded(directory: Path) -> ModelBundle:
    """A model directory, loaded; what its decisions assume for lack of a model is logged."""
    bundle = ModelBundle.load(directory)
    for assumption in bundle.assumptions:
        logging.getLogger(__name__).warning("model %s: %s", bundle.version, assumption)
    return bundle
