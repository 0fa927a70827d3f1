"""The edge between requests and the cap store: read counts, decide caps, record impressions.

The gate does the I/O and applies the pure decision (``evaluate.capped``). When the store does
not answer within its deadline (or its circuit breaker is open) it fails closed (default: every
candidate some rule applies to is refused, with reason CAP_STORE_UNAVAILABLE, not
FREQUENCY_CAPPED) or open (nothing is capped, exposures count as zero), and counts the event.
The breaker logs the store's outages (``breaker.py``), not the gate each request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from engine.caps import evaluate
from engine.caps.plan import Plan, Planner
from engine.caps.rules import CampaignCaps, CapRule, CapsConfig
from engine.caps.store import (
    BLOCK_REFUSAL,
    CapReading,
    CapStore,
    Check,
    Feedback,
    Impression,
    StoreUnavailable,
)
from engine.errors import AdmatchError, InvalidArgument
from engine.scoring.types import PodRoom, ScoreRequest
from features.exposure import EXPOSURE_SCHEMA, SINCE_COLUMNS
from features.online import CandidateColumns, RequestContext

log = logging.getLogger(__name__)
_NO_HISTORY = np.array([np.nan if c in SINCE_COLUMNS else 0.0 for c in EXPOSURE_SCHEMA.names()])


@dataclass(frozen=True)
class GateReading:
    """Exposures for the features and the cap decision for one request (``store_ok`` False:
    the store did not answer and ``capped`` is the fail mode's)."""

    exposures: np.ndarray
    capped: np.ndarray
    store_ok: bool
    room: PodRoom | None = None
    separated: np.ndarray | None = None  # capped by stream separation (when some rule is)
    blocked: np.ndarray | None = None  # capped by a block: feedback, a conversion (when any)


class Reservation(Enum):
    """What a reservation of one selected ad came to."""

    RESERVED = "reserved"  # recorded (or recorded before: a retry)
    CAPPED = "capped"  # a cap or gap refuses it now
    BLOCKED = "blocked"  # the user's feedback or a conversion blocks it
    SEPARATED = "separated"  # stream separation refuses it now
    UNAVAILABLE = "unavailable"  # the store did not answer, failing closed: not shown
    UNRESERVED = "unreserved"  # the store did not answer, failing open: shown, not recorded


class CapGate:
    """Reads and writes the cap store for requests and events."""

    def __init__(
        self,
        store: CapStore,
        caps: CapsConfig,
        retention_s: int,
        fail_open: bool,
        pod_slots: frozenset[str] = frozenset(),
    ) -> None:
        """``pod_slots``: the slots whose requests fill a pod (a request with its own ``pod``
        is one too): their readings say what the caps leave for the pod's ads together."""
        self.store = store
        self.pod_slots = pod_slots
        self.caps = caps
        self.retention_s = retention_s
        self.fail_open = fail_open
        self.errors = 0
        self.gaps = caps.gap_rules  # min_gaps, then the separation rules'
        self.planner = Planner(
            caps.rules, self.gaps, caps.block_rules, retention_s, caps.competitor_of
        )
        self._thresholds = evaluate.thresholds(caps.rules, self.gaps)

    @property
    def mode(self) -> str:
        """``open`` or ``closed``: what a request gets when the store does not answer."""
        return "open" if self.fail_open else "closed"

    def own_rules(self, campaign_caps: CampaignCaps | None) -> list[CapRule]:
        """The campaigns' own caps, each bound to its campaign.

        Raises:
            InvalidArgument: a cap with a touchpoint or slot filter or another target than
                the campaign (an own cap counts its campaign's exposures everywhere; the
                summaries keep only the unfiltered campaign families' long counts), naming
                the campaign, the cap and the field.
        """
        out = []
        for campaign, caps in (campaign_caps or {}).items():
            for i, rule in enumerate(caps):
                at = f"campaign_caps[{campaign!r}][{i}]"
                for name in ("touchpoint", "slot"):
                    if getattr(rule, name) is not None:
                        raise InvalidArgument(
                            f"{at}.{name}",
                            "a campaign's own cap counts the campaign's exposures on every "
                            f"touchpoint; a {name} filter is not supported (a global rule "
                            "in [[caps.rules]] can have one)",
                        )
                if rule.target != "campaign":
                    raise InvalidArgument(
                        f"{at}.target",
                        f"a campaign's own cap counts its campaign, not {rule.target!r}",
                    )
                out.append(rule.model_copy(update={"campaign_id": campaign}))
        return out

    def rules(self, campaign_caps: CampaignCaps | None = None) -> list[CapRule]:
        """The global rules plus the campaigns' own caps (each bound to its campaign)."""
        return [*self.caps.rules, *self.own_rules(campaign_caps)]

    def read(
        self,
        context: RequestContext,
        candidates: CandidateColumns,
        campaign_caps: CampaignCaps | None = None,
        budget_s: float | None = None,
        pod: bool = False,
    ) -> GateReading:
        """One round trip: exposure counts and which candidates the caps refuse. Campaigns'
        own caps add to the global rules; the strictest applicable rule decides. The store
        waits at most ``budget_s`` (the request's time left), never longer than its deadline.
        For a ``pod``, the reading also says what the caps leave for its ads together."""
        own = self.own_rules(campaign_caps)
        plan = self.planner.plan(context, candidates, own)
        try:
            reading = self.store.read(plan, budget_s=budget_s)
        except StoreUnavailable as exc:
            return self._unavailable(plan, exc)
        return self._decide(reading, own, plan, pod)

    def _decide(
        self, reading: CapReading, own: list[CapRule], plan: Plan, pod: bool
    ) -> GateReading:
        limits = (
            evaluate.thresholds([*self.caps.rules, *own], self.gaps) if own else self._thresholds
        )
        room = evaluate.pod_room(plan, reading, limits[0]) if pod else None
        capped = evaluate.refused(reading, *limits)
        apart = blocked = None
        if capped.any():
            apart = evaluate.separated(reading, limits[1], self.caps.separating)
            blocked = reading.blocked if reading.blocked.any() else None
        return GateReading(reading.exposures, capped, True, room, apart, blocked)

    def is_pod(self, request: ScoreRequest) -> bool:
        """Whether the request fills a pod (its slot's, or its own ``pod``)."""
        return request.pod is not None or request.context.slot in self.pod_slots

    def _unavailable(self, plan: Plan, exc: StoreUnavailable) -> GateReading:
        """Fail closed (every candidate some rule applies to is capped) or open; count it."""
        self.errors += 1
        log.debug("cap store unavailable, failing %s: %s", self.mode, exc)
        unknown = np.zeros(plan.n, dtype=bool) if self.fail_open else evaluate.subject_to_caps(plan)
        return GateReading(np.tile(_NO_HISTORY, (plan.n, 1)), unknown, False)

    def prepare(self, request: ScoreRequest, budget_s: float | None = None) -> ScoreRequest:
        """The request with the store's exposures and cap decision filled in."""
        reading = self.read(
            request.context,
            request.candidates,
            request.campaign_caps,
            budget_s,
            self.is_pod(request),
        )
        return with_reading(request, reading)

    def prepare_many(
        self, requests: Sequence[ScoreRequest], budget_s: float | None = None
    ) -> list[ScoreRequest | Exception]:
        """:meth:`prepare` for several requests with one round trip (``CapStore.read_many``),
        waiting at most ``budget_s``.

        Returns:
            Per request, in order, the prepared request or the error :meth:`prepare` would
            raise for it: a request whose plan or read fails fails alone. A store that does not
            answer fails each request closed or open, each counted in ``errors`` as if read
            alone. A lone request takes :meth:`prepare` (no pipeline).
        """
        if len(requests) == 1:
            try:
                return [self.prepare(requests[0], budget_s)]
            except Exception as exc:  # the caller's to deliver, as for the others
                return [exc]
        plans: dict[int, tuple[Plan, list[CapRule]]] = {}
        failed: dict[int, Exception] = {}
        for i, request in enumerate(requests):
            try:
                own = self.own_rules(request.campaign_caps)
                plans[i] = (self.planner.plan(request.context, request.candidates, own), own)
            except Exception as exc:
                failed[i] = exc
        answers = self.store.read_many([plan for plan, _ in plans.values()], budget_s=budget_s)
        readings = dict(zip(plans, answers, strict=True))
        return [
            failed[i] if i in failed else self._prepared(request, *plans[i], readings[i])
            for i, request in enumerate(requests)
        ]

    def _prepared(
        self,
        request: ScoreRequest,
        plan: Plan,
        own: list[CapRule],
        reading: CapReading | AdmatchError,
    ) -> ScoreRequest | Exception:
        if isinstance(reading, StoreUnavailable):
            return with_reading(request, self._unavailable(plan, reading))
        if isinstance(reading, Exception):
            return reading
        return with_reading(request, self._decide(reading, own, plan, self.is_pod(request)))

    def reserve(
        self,
        context: RequestContext,
        candidates: Sequence[CandidateColumns],
        impressions: Sequence[Impression],
        campaign_caps: CampaignCaps | None = None,
        budget_s: float | None = None,
    ) -> list[Reservation]:
        """For each selected candidate (one-candidate columns) in order, atomically re-check
        its caps and record its impression: one round trip for all of them, each counting the
        ones before it (a pod's ads), a refusal of one leaving the others theirs (a partial
        grant). The store waits at most ``budget_s``.

        Returns:
            Per candidate: RESERVED; CAPPED (a cap or gap refuses it now: another server got
            there first), BLOCKED (the user's feedback or a conversion), SEPARATED (stream
            separation); or, when the store does not answer, UNAVAILABLE (failing closed) or
            UNRESERVED (failing open).
        """
        own = self.own_rules(campaign_caps)
        rules = [*self.caps.rules, *own]
        attempts = []
        for candidate, impression in zip(candidates, impressions, strict=True):
            plan = self.planner.plan(context, candidate, own)
            checks = evaluate.checks(plan, rules, self.gaps, self.caps.separating)
            attempts.append((impression, plan, checks))
        try:
            results = self.store.check_and_record(attempts, budget_s)
        except StoreUnavailable:
            return [self.unavailable() for _ in attempts]
        return [
            self.unavailable() if isinstance(r, StoreUnavailable) else _outcome(r, a[2])
            for r, a in zip(results, attempts, strict=True)
        ]

    def unavailable(self) -> Reservation:
        """The reservation the fail mode gives when the store does not answer (counted)."""
        self.errors += 1
        return Reservation.UNRESERVED if self.fail_open else Reservation.UNAVAILABLE

    def record(self, impressions: list[Impression], feedback: list[Feedback] | None = None) -> int:
        """Record impressions (idempotent) and apply feedback blocks; return new impressions."""
        recorded = self.store.record(impressions)
        if feedback:
            self.store.block(feedback)
        return recorded


def _outcome(result: int, checks: list[Check]) -> Reservation:
    """What one check-and-record's answer means."""
    if result >= 0:
        return Reservation.RESERVED
    if result == BLOCK_REFUSAL:
        return Reservation.BLOCKED
    return Reservation.SEPARATED if checks[-result - 1].separation else Reservation.CAPPED


def with_reading(request: ScoreRequest, reading: GateReading) -> ScoreRequest:
    """``request`` with a reading's exposures and cap decision filled in."""
    return dataclasses.replace(
        request,
        exposures=reading.exposures,
        capped=reading.capped,
        cap_store_ok=reading.store_ok,
        pod_room=reading.room,
        separated=reading.separated,
        user_blocked=reading.blocked,
    )
