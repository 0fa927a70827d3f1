"""The cap store interface, the events it records, and what it returns for a request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from engine.caps.plan import US, Plan
from engine.errors import AdmatchError
from features.exposure import EXPOSURE_SCHEMA, SINCE_COLUMNS

_SINCE_INDEX = [EXPOSURE_SCHEMA.names().index(c) for c in SINCE_COLUMNS]


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
    """The user's negative feedback on an impression (skip, close, dislike, hide, complaint)."""

    impression_id: str
    ts: datetime
    kind: str
    user_id: str
    household_id: str | None = None
    campaign_id: str | None = None
    advertiser_id: str | None = None


@dataclass(frozen=True)
class CapReading:
    """What the store knows for one request's candidates.

    Attributes:
        exposures: (n x 30) in the feature core's ``EXPOSURE_SCHEMA`` order, NaN recency = none.
        rule_counts: (n x rules) exposures in each cap rule's window; NaN where it does not apply.
        gap_since: (n x gap rules) seconds since the family's latest exposure; NaN if none or
            not applicable.
        blocked: (n,) the user's (or household's) feedback blocks the candidate.
    """

    exposures: np.ndarray
    rule_counts: np.ndarray
    gap_since: np.ndarray
    blocked: np.ndarray


Answers = list[dict[tuple[str, int], float]]


def encode(plan: Plan) -> list[str]:
    """Per-counter READ arguments (after ``t, n``), in the order ``answer_slot`` numbers them."""
    args: list[str] = []
    day_t = plan.t_us // (86_400 * US)
    for k in range(len(plan.counters)):
        windows = sorted(plan.windows[k])
        args.append(str(len(windows)))
        args += [str(plan.t_us - w * US) for w in windows]
        days = sorted(plan.day_windows[k])
        args.append(str(len(days)))
        for d in days:
            fields = ["L"] if d == 0 else [str(day_t - i) for i in range(d)]
            args += [str(len(fields)), *fields]
        args.append("1" if plan.last[k] else "0")
    return args


def answer_slot(plan: Plan, k: int, kind: str, window: int) -> int:
    """1-based position of an answer among counter ``k``'s answers (windows, days, last)."""
    windows, days = sorted(plan.windows[k]), sorted(plan.day_windows[k])
    if kind == "window":
        return windows.index(window) + 1
    if kind == "days":
        return len(windows) + days.index(window) + 1
    return len(windows) + len(days) + 1


def split_answers(plan: Plan, flat: list[int]) -> tuple[Answers, np.ndarray]:
    """Cut the READ script's flat reply into per-counter answers and block flags."""
    answers: Answers = []
    pos = 0
    for k in range(len(plan.counters)):
        a: dict[tuple[str, int], float] = {}
        for w in sorted(plan.windows[k]):
            a[("window", w)] = float(flat[pos])
            pos += 1
        for d in sorted(plan.day_windows[k]):
            a[("days", d)] = float(flat[pos])
            pos += 1
        if plan.last[k]:
            a[("since", 0)] = float(flat[pos])
            pos += 1
        answers.append(a)
    return answers, np.asarray(flat[pos:], dtype=bool)


def scatter(
    plan: Plan, answers: Answers, blocks: np.ndarray, n_rules: int, n_gaps: int
) -> CapReading:
    """Place the answers where the plan says they go."""
    out = {
        "exposures": np.zeros((plan.n, len(EXPOSURE_SCHEMA))),
        "rule_counts": np.full((plan.n, n_rules), np.nan),
        "gap_since": np.full((plan.n, n_gaps), np.nan),
    }
    out["exposures"][:, _SINCE_INDEX] = np.nan
    for name, rows, col, k, kind, w in plan.targets:
        value = answers[k][(kind, w if kind != "since" else 0)]
        if kind == "since":
            value = np.nan if value < 0 else (plan.t_us - value) / US
        out[name][rows, col] = value
    blocked = np.zeros(plan.n, dtype=bool)
    for rows, flag in zip(plan.block_rows, blocks, strict=True):
        blocked[rows] |= bool(flag)
    return CapReading(out["exposures"], out["rule_counts"], out["gap_since"], blocked)


class CapStore(Protocol):
    """Exposure counts and caps, shared by every server and replay.

    Contract (checked by ``tests/integration/test_cap_store_contract.py`` on every backend):
    windows are ``(t - window, t)`` exclusive at both ends; an impression counts under its own
    timestamp whatever order events arrive in; an ``impression_id`` counts once however often it
    is recorded; ``check_and_record`` admits an impression only if no applicable cap, gap or
    block refuses it, atomically with respect to every other call.
    """

    def read(self, plan: Plan, n_rules: int, n_gaps: int) -> CapReading:
        """Answer a request's plan in one round trip.

        Raises:
            StoreUnavailable: the store did not answer within its deadline.
        """
        ...

    def record(self, impressions: list[Impression]) -> int:
        """Record impressions; return how many were new (duplicates are ignored)."""
        ...

    def check_and_record(self, impression: Impression, plan: Plan, checks: list[Check]) -> int:
        """Atomically: if no check fails, record the impression and return 1; else return
        ``-(i+1)`` for failing check ``i`` (or ``-(1000000+j+1)`` for block ``j``); 0 if the
        impression id was already recorded."""
        ...

    def block(self, feedback: list[Feedback]) -> int:
        """Apply negative feedback; return how many blocks were set."""
        ...

    def close(self) -> None:
        """Release connections (and stop an embedded server)."""
        ...


@dataclass(frozen=True)
class Check:
    """One condition of an atomic check: counter ``k``'s answer ``kind``/``window`` must stay
    below ``threshold`` (a count limit), or, for ``since``, be at least ``threshold`` seconds."""

    counter: int
    kind: str
    window: int
    threshold: float
