"""The cap store interface, the events it records, and what it returns for a request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, overload

import numpy as np

from engine.caps import kernel
from engine.caps.plan import N_EXPOSURES, US, Plan, micros
from engine.caps.rules import BlockRule, CapsConfig
from engine.errors import AdmatchError


class StoreUnavailable(AdmatchError):
    """The cap store did not answer in time or at all; callers fail closed or open."""

    status = "UNAVAILABLE"


@dataclass(frozen=True)
class Impression:
    """An ad shown: counted under its own timestamp, once per ``impression_id``."""

    impression_id: str
    ts: datetime
    user_id: str
    touchpoint: str
    slot: str
    ad_id: str
    household_id: str | None = None
    device_id: str | None = None
    creative_id: str | None = None
    campaign_id: str | None = None
    advertiser_id: str | None = None
    category: str | None = None

    @classmethod
    def from_row(cls, impression_id: str, row: dict[str, Any]) -> Impression:
        """The impression of a shown log row (a dict of its columns)."""
        return cls(
            impression_id,
            row["ts"],
            row["user_id"],
            row["touchpoint"],
            row["slot"],
            row["ad_id"],
            row.get("household_id"),
            row.get("device_id"),
            row.get("creative_id"),
            row.get("campaign_id"),
            row.get("advertiser_id"),
            row.get("category"),
        )

    def ids(self) -> dict[str, str | None]:
        """The id columns by schema name."""
        return {
            "user_id": self.user_id,
            "household_id": self.household_id,
            "device_id": self.device_id,
            "ad_id": self.ad_id,
            "creative_id": self.creative_id,
            "campaign_id": self.campaign_id,
            "advertiser_id": self.advertiser_id,
            "category": self.category,
        }


@dataclass(frozen=True)
class Feedback:
    """What the user did after an impression that a block rule may act on: negative feedback
    (``kind`` skip, close, dislike, hide, complaint) or a conversion (``kind`` conversion)."""

    impression_id: str
    ts: datetime
    kind: str
    user_id: str
    household_id: str | None = None
    campaign_id: str | None = None
    advertiser_id: str | None = None
    category: str | None = None

    def target_id(self, target: str) -> str | None:
        """The campaign, advertiser or category id a block of ``target`` sets."""
        return self.category if target == "category" else getattr(self, f"{target}_id")


BLOCK_REFUSAL = -1_000_000  # what check_and_record returns when a block refuses


class BlockWrite(NamedTuple):
    """One block to set: whose (``scope``, ``scope_id``; ``event`` says whose hash tag), on
    which ``target`` id, until when (epoch microseconds), kept ``ttl_s``."""

    event: Feedback
    scope: str
    scope_id: str
    target: str
    target_id: str
    until_us: int
    ttl_s: int


def block_writes(rules: Sequence[BlockRule], events: Sequence[Feedback]) -> list[BlockWrite]:
    """The blocks ``events`` set under ``rules``: per rule an event's kind sets, the user's (and
    the household's, when the rule says so) block of the event's target id, until the event's
    time plus the rule's duration. An event without that target id sets none of that target."""
    out = []
    for e in events:
        for rule in rules:
            target_id = e.target_id(rule.target)
            if not rule.applies(e.kind) or target_id is None:
                continue
            until, ttl = micros(e.ts) + rule.duration_s * US, rule.duration_s
            out.append(BlockWrite(e, "user", e.user_id, rule.target, target_id, until, ttl))
            if rule.household and e.household_id:
                scope_id = e.household_id
                out.append(BlockWrite(e, "household", scope_id, rule.target, target_id, until, ttl))
    return out


@dataclass(frozen=True)
class CapReading:
    """What the store knows for one request's candidates.

    Attributes:
        exposures: (n x 30) in the feature core's ``EXPOSURE_SCHEMA`` order, NaN recency = none.
        rule_counts: (n x rules) exposures in each cap rule's window; NaN where it does not apply.
        gap_since: (n x gap rules) seconds since the family's latest exposure; NaN if none or
            not applicable.
        blocked: (n,) a block (the user's or household's feedback, a conversion) covers the
            candidate.
    """

    exposures: np.ndarray
    rule_counts: np.ndarray
    gap_since: np.ndarray
    blocked: np.ndarray


class Answers(Sequence[np.ndarray]):
    """What a backend answers for a plan: per group (``answers[g]``), one row per field and a
    last row that stays default (a candidate with a null id reads it): counts 0, latest times
    -1. The groups are views of one flat array (``flat``, group ``g`` from ``offsets[g]``), so
    every candidate's answers are placed with one gather (:func:`place`)."""

    def __init__(self, plan: Plan) -> None:
        widths = plan.shape.widths
        offsets, end = [], 0
        for fields, width in zip(plan.fields, widths, strict=True):
            offsets.append(end)
            end += (len(fields) + 1) * width
        self.flat = np.zeros(end)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        for g, column in plan.shape.latest:  # the latest times' cells, every row's
            at, width = offsets[g], widths[g]
            self.flat[at + column : at + (len(plan.fields[g]) + 1) * width : width] = -1.0
        rows = [len(f) + 1 for f in plan.fields]
        self._shape = list(zip(offsets, rows, widths, strict=True))
        self._groups: list[np.ndarray] | None = None

    @property
    def groups(self) -> list[np.ndarray]:
        """The groups as (rows x width) views of ``flat`` (made when first asked for)."""
        if self._groups is None:
            self._groups = [self.flat[o : o + n * w].reshape(n, w) for o, n, w in self._shape]
        return self._groups

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        return self.groups[index]

    def __len__(self) -> int:
        return len(self.groups)


def place(plan: Plan, answers: Answers, blocked: np.ndarray) -> CapReading:
    """Place the answers where the plan says they go.

    Every candidate starts from the shape's ``base_row`` (a campaign's own caps: NaN, it binds
    only its campaign's candidates) and gathers its groups' answers at once (a null id reads
    its group's default row, and a rule it refuses does not apply: NaN); latest times become
    seconds since (none: NaN; a campaign recency also NaN where its window's count is 0,
    ``features.exposure``).

    Args:
        plan: the request's plan.
        answers: the backend's answers for it.
        blocked: per candidate, whether a block covers it (:meth:`Plan.blocked`).
    """
    shape, n = plan.shape, plan.n
    out = np.empty((n, len(shape.base_row)))
    # a null id reads its group's last row, where the group's rules do not apply (NaN)
    last = np.fromiter(map(len, plan.fields), dtype=np.int64, count=len(plan.fields))
    kernel.place(
        out,
        shape.base_row,
        answers.flat,
        answers.offsets,
        plan.safe_rows,
        last,
        shape.gather,
        shape.since_outputs,
        shape.since_guards,
        plan.t_us,
        any(plan.nulls),
    )
    for t, column in shape.own_targets:  # a campaign's own cap: only its campaign's candidates
        applies = plan.applies(t)
        if applies.any():
            out[applies, column] = answers[t.group][plan.rows[t.group][applies], t.column]
    n_exp, n_rules = N_EXPOSURES, shape.n_rules
    return CapReading(
        np.ascontiguousarray(out[:, :n_exp]),
        out[:, n_exp : n_exp + n_rules],
        out[:, n_exp + n_rules :],
        blocked,
    )


class CapStore(Protocol):
    """Exposure counts and caps, shared by every server and replay.

    Contract (checked by ``tests/integration/test_cap_store_contract.py`` on every backend):
    windows are ``(t - window, t)`` exclusive at both ends; an impression counts under its own
    timestamp whatever order events arrive in; an ``impression_id`` (unique within a household, or
    a user without one: a retry is the same event) counts once however often it
    is recorded; ``check_and_record`` admits an impression only if no applicable cap, gap or
    block refuses it, atomically with respect to every other call.
    """

    def read(self, plan: Plan, budget_s: float | None = None) -> CapReading:
        """Answer a request's plan in one round trip, waiting at most ``budget_s`` (the
        request's time left; never longer than the store's own deadline).

        Raises:
            InvalidArgument: a backend cannot take the plan's ids (its own limit).
            StoreUnavailable: the store did not answer within its deadline.
        """
        ...

    def read_many(
        self, plans: Sequence[Plan], budget_s: float | None = None
    ) -> list[CapReading | AdmatchError]:
        """Answer several requests' plans in one round trip (on a cluster, one per node, all
        sent before any answer is read), waiting at most ``budget_s`` for all of them.

        Returns:
            One answer per plan, in order: what :meth:`read` returns for it, or the error
            :meth:`read` would raise for it (``InvalidArgument``, ``StoreUnavailable``), so that
            one plan's failure does not spoil the others'. A store that does not answer at all
            gives every plan ``StoreUnavailable``. No plans: an empty list, no round trip.
        """
        ...

    def record(self, impressions: list[Impression]) -> int:
        """Record impressions; return how many were new (duplicates are ignored)."""
        ...

    def check_and_record(
        self, attempts: Sequence[Attempt], budget_s: float | None = None
    ) -> list[int | StoreUnavailable]:
        """Per attempt (an impression, its one-candidate plan, its checks), in order, each
        atomically: 0 if the impression id was already recorded; else, if no check fails and
        no block covers the candidate, record the impression and 1; else ``-(i+1)`` for
        failing check ``i``, or ``BLOCK_REFUSAL`` for a block. A later attempt counts the
        earlier ones it follows (the ads of one pod). The attempts of one household are one
        atomic unit: one round trip after the store read that household (the request's own
        read), one more without it or when another write raced them; an attempt the server
        refused alone is its ``StoreUnavailable``. Each call waits at most ``budget_s``, as
        :meth:`read`.

        Raises:
            StoreUnavailable: no answer at all.
        """
        ...

    def block(self, feedback: list[Feedback]) -> int:
        """Apply the block rules to negative feedback and conversions; return how many blocks
        were set."""
        ...

    def configure(self, caps: CapsConfig) -> None:
        """Write by ``caps`` from now on (a config reload): the families an impression counts
        in and what each keeps for its rules, the blocks feedback sets, the competition labels.
        Reads follow the plans they are given (the gate plans them from the same config)."""
        ...

    def ping(self, budget_s: float | None = None) -> None:
        """Return when the store answers, waiting at most ``budget_s`` (never longer than its
        deadline).

        Raises:
            StoreUnavailable: it did not answer.
        """
        ...

    def close(self) -> None:
        """Release connections (and stop an embedded server)."""
        ...


@dataclass(frozen=True)
class Check:
    """One condition of an atomic check on a one-candidate plan: the answer in ``column`` of
    group ``group``'s row must stay below ``threshold`` (``kind`` "count": a limit), or (``kind``
    "since": the latest impression's time) be at least ``threshold`` seconds before the
    request."""

    group: int
    column: int
    kind: str
    threshold: float
    separation: bool = False  # a stream-separation gap (its refusal's reason differs)


Attempt = tuple[Impression, Plan, list[Check]]  # one reservation: see CapStore.check_and_record


def refusal(plan: Plan, checks: Sequence[Check], answers: Sequence[np.ndarray]) -> int:
    """0 when no check refuses a one-candidate plan's (inclusive) answers, else ``-(i+1)``
    for the first check ``i`` that does."""
    for i, chk in enumerate(checks):
        value = answers[chk.group][0, chk.column]
        if chk.kind == "since":
            if value >= 0 and plan.t_us - value < chk.threshold * US:
                return -(i + 1)
        elif value >= chk.threshold:
            return -(i + 1)
    return 0
