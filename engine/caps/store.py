"""The cap store interface, the events it records, and what it returns for a request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

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


Answers = list[np.ndarray]  # per lookup: (fields x slots), see Lookup.slots()


def encode(plan: Plan) -> str:
    """The READ request as JSON (see ``lua.py``), each distinct field list sent once."""
    field_sets: list[list[str]] = []
    index: dict[int, int] = {}

    def field_set(fields: list[str]) -> int:
        if id(fields) not in index:  # lookups of one id column share its list object
            index[id(fields)] = len(field_sets)
            field_sets.append(fields)
        return index[id(fields)]

    day_t = plan.t_us // (86_400 * US)
    lookups = [
        {
            "k": "A" if lk.family.target == "any" else "T",
            "f": field_set(lk.fields),
            "w": [plan.t_us - w * US for w in sorted(lk.windows)],
            "d": [-1 if d == 0 else day_t - d + 1 for d in sorted(lk.day_windows)],
            "l": 1 if lk.last else 0,
        }
        for lk in plan.lookups
    ]
    blocks = field_set(plan.block_fields) if plan.block_fields else -1
    request = {
        "t": plan.t_us,
        "fs": field_sets,
        "lk": lookups,
        "bf": blocks,
        "nb": len(plan.blocks),
    }
    return json.dumps(request, separators=(",", ":"))


def empty_answers(plan: Plan, k: int) -> np.ndarray:
    """Answers of a lookup with no history: counts 0, latest time -1."""
    lk = plan.lookups[k]
    out = np.zeros((len(lk.fields), len(lk.slots())))
    if lk.last:
        out[:, -1] = -1.0
    return out


def split_answers(plan: Plan, flat: list[int]) -> tuple[Answers, np.ndarray]:
    """Cut the READ reply into per-lookup (fields x slots) arrays and per-field block flags.

    The reply lists, per lookup, only the fields with history: ``m`` then ``m`` values made of
    the field's 1-based index and its answers; every other field keeps the empty answers.
    """
    values = np.asarray(flat, dtype=np.float64)
    answers: Answers = []
    pos = 0
    for k, lk in enumerate(plan.lookups):
        a = empty_answers(plan, k)
        width = len(lk.slots()) + 1
        m = int(values[pos])
        entries = values[pos + 1 : pos + 1 + m].reshape(-1, width)
        a[entries[:, 0].astype(np.int64) - 1] = entries[:, 1:]
        answers.append(a)
        pos += 1 + m
    n_fields = len(plan.block_fields)
    blocks = np.zeros(n_fields, dtype=bool)
    if n_fields:
        blocks = np.asarray(values[pos:].reshape(-1, n_fields).any(axis=0), dtype=bool)
    return answers, blocks


def scatter(
    plan: Plan, answers: Answers, blocks: np.ndarray, n_rules: int, n_gaps: int
) -> CapReading:
    """Place the answers where the plan says they go (vectorised per target)."""
    out = {
        "exposures": np.zeros((plan.n, len(EXPOSURE_SCHEMA))),
        "rule_counts": np.full((plan.n, n_rules), np.nan),
        "gap_since": np.full((plan.n, n_gaps), np.nan),
    }
    out["exposures"][:, _SINCE_INDEX] = np.nan
    for name, col, k, kind, w, only in plan.targets:
        lk = plan.lookups[k]
        values = answers[k][:, lk.slots().index((kind, w))]
        if kind == "since":
            values = np.where(values < 0, np.nan, (plan.t_us - values) / US)
        rows = lk.rows_field
        known = rows >= 0 if only < 0 else rows == only
        out[name][known, col] = values[rows[known]]
    blocked = np.zeros(plan.n, dtype=bool)
    if len(plan.block_fields):
        known = plan.block_rows >= 0
        blocked[known] = blocks[plan.block_rows[known]]
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
    """One condition of an atomic check on a one-candidate plan: lookup ``lookup``'s answer
    ``kind``/``window`` must stay below ``threshold`` (a count limit), or, for ``since``, be at
    least ``threshold`` seconds old."""

    lookup: int
    kind: str
    window: int
    threshold: float
