"""Planning what one request needs from a cap store, and what one impression writes.

Planning is pure: it turns a request (or an impression) and the rules into lookups on
*families* of counters. A family (scope x target, optionally filtered) of one scope id (a user,
a household, a device) is one unit of storage whose fields are target ids ("*" for any ad), so a
request reads each family once, for all its candidates' ids. Backends only execute the lookups,
so every backend counts the same way by construction.

The candidate-independent part of a plan, its :class:`~engine.caps.shape.Shape`, is cached per
situation by the :class:`Planner`; a request only adds its time, scope ids and the distinct ids
of its candidates (a :class:`Plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from engine.caps.rules import (
    COMPETITOR,
    SCOPE_COLUMN,
    TARGET_COLUMN,
    BlockRule,
    CapRule,
    Family,
    GapRule,
)
from engine.caps.shape import (
    FEATURE_FAMILIES,
    N_EXPOSURES,
    BlockSpec,
    Lookup,
    Shape,
    Target,
    build_shape,
)
from engine.errors import InvalidArgument
from features.online import CandidateColumns, RequestContext
from features.schema import EARLIEST_TS, LATEST_TS

__all__ = [
    "ANY",
    "DAY_US",
    "FEATURE_FAMILIES",
    "N_EXPOSURES",
    "US",
    "Lookup",
    "check_not_ahead",
    "check_time",
    "Plan",
    "Planner",
    "Shape",
    "Target",
    "impression_families",
    "impression_writes",
    "micros",
    "plan_request",
]

US = 1_000_000
DAY_US = 86_400 * US
ANY = "*"
_CACHE_SIZE = 4_096


def micros(ts: datetime) -> int:
    """Epoch microseconds of an aware datetime."""
    return int(ts.timestamp()) * US + ts.microsecond


def check_time(ts: datetime, field: str) -> None:
    """Refuse an aware time outside [``EARLIEST_TS``, ``LATEST_TS``) (``features.schema``: the
    times the cap store counts), naming ``field``.

    Raises:
        InvalidArgument: the time is outside the range.
    """
    if not EARLIEST_TS <= ts < LATEST_TS:
        span = f"{EARLIEST_TS.date()} to {LATEST_TS.date()}"
        raise InvalidArgument(field, f"{ts.isoformat()} is outside the times counted ({span})")


def check_not_ahead(ts: datetime, now: datetime, ahead_s: int, field: str) -> None:
    """Refuse a time to be recorded that lies more than ``ahead_s`` after ``now`` (the
    service's clock), naming ``field``. A counter keeps the times of its last retention (plus
    ``ahead_s``) behind its newest, so one impression timed a month ahead would push every
    real one out.

    Raises:
        InvalidArgument: the time is too far ahead.
    """
    if (ts - now).total_seconds() > ahead_s:
        raise InvalidArgument(
            field,
            f"{ts.isoformat()} is more than {ahead_s} s after the server's clock "
            f"({now.isoformat()}); times that far ahead are refused (store.max_ahead)",
        )


@dataclass
class Plan:
    """One request's lookups: its shape, time, scope ids and candidate ids.

    ``fields[g]`` are the distinct ids of group ``g`` (``["*"]`` for the target any) and
    ``rows[g]`` each candidate's index among them (-1: a null id, nothing to read);
    ``nulls[g]`` says whether some candidate has -1 there; ``safe_rows`` (candidates x
    groups) has the rows with a null id's -1 made the group's last row (its defaults). ``only``
    maps a campaign's own cap (rule index) to the field of its campaign (-1: not a candidate).
    """

    shape: Shape
    t_us: int
    n: int
    user_id: str
    household_id: str | None
    device_id: str | None
    fields: list[list[str]]
    rows: list[np.ndarray]
    only: dict[int, int]
    nulls: list[bool]
    safe_rows: np.ndarray

    @property
    def lookups(self) -> tuple[Lookup, ...]:
        """The shape's lookups."""
        return self.shape.lookups

    def scope_id(self, lookup: Lookup) -> str:
        """The user, household or device id a lookup reads."""
        scope = lookup.family.scope
        value = {"user": self.user_id, "household": self.household_id, "device": self.device_id}
        return str(value[scope])

    @property
    def blocks(self) -> list[tuple[str, str, str]]:
        """(scope, scope id, target) of each block hash the request reads, spec by spec."""
        ids = {"user": self.user_id, "household": self.household_id}
        return [(s, str(ids[s]), b.target) for b in self.shape.blocks for s in b.scopes]

    def block_fields(self, spec: BlockSpec) -> list[str]:
        """The ids (campaigns, advertisers or categories) a block spec looks up."""
        return self.fields[spec.group]

    def blocked(self, flags: Sequence[np.ndarray]) -> np.ndarray:
        """Per candidate, whether a block covers it, from per spec its fields' flags."""
        out = np.zeros(self.n, dtype=bool)
        for spec, flagged in zip(self.shape.blocks, flags, strict=True):
            if len(flagged) and flagged.any():
                rows = self.rows[spec.group]
                known = rows >= 0
                out[known] |= flagged[rows[known]]
        return out

    def block_subject(self) -> np.ndarray:
        """Candidates some block could cover (they have an id of a block target)."""
        out = np.zeros(self.n, dtype=bool)
        for spec in self.shape.blocks:
            out |= self.rows[spec.group] >= 0
        return out

    def applies(self, target: Target) -> np.ndarray:
        """Candidates a target's answer applies to (they have its id; its campaign's own)."""
        rows = self.rows[target.group]
        if target.rule < 0:
            return rows >= 0
        campaign = self.only.get(target.rule, -1)
        return rows == campaign if campaign >= 0 else np.zeros(self.n, dtype=bool)


_Ids = tuple[list[str], np.ndarray, bool]  # distinct ids, each candidate's index, any null


def _distinct(values: Sequence[object] | np.ndarray | None, n: int) -> _Ids:
    """Distinct non-null ids in first-seen order, each candidate's index among them (-1 for a
    null id), and whether some id is null. C-level passes over the candidates only."""
    if values is None:
        return [], np.full(n, -1, dtype=np.int64), n > 0
    index: dict[Any, int] = dict.fromkeys(values, -1)
    null = index.pop(None, None) is not None
    for i, value in enumerate(index):  # the distinct ids, not the candidates
        index[value] = i
    fields = list(index)
    index[None] = -1
    rows = np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=n)
    return fields, rows, null


class Planner:
    """Plans requests against fixed global rules; shapes are cached per situation."""

    def __init__(
        self,
        rules: Sequence[CapRule],
        gaps: Sequence[GapRule],
        blocks: Sequence[BlockRule],
        retention_s: int,
        competing: Mapping[str, str] | None = None,
    ) -> None:
        """``competing``: category -> its competition label (``CapsConfig.competitor_of``)."""
        self.rules, self.gaps, self.blocks = list(rules), list(gaps), list(blocks)
        self.competing = dict(competing or {})
        self.retention_s = retention_s
        self._shapes: dict[tuple[object, ...], Shape] = {}

    def shape(self, context: RequestContext, own: Sequence[CapRule] = ()) -> Shape:
        """The cached shape of a request's situation (``own``: its campaigns' own caps)."""
        scopes = frozenset(
            s for s in ("user", "household", "device") if getattr(context, SCOPE_COLUMN[s])
        )
        key = (
            context.touchpoint,
            context.slot,
            scopes,
            tuple((r.scope, r.target, r.touchpoint, r.slot, r.window) for r in own),
        )
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= _CACHE_SIZE:
                self._shapes.clear()
            shape = build_shape(
                context.touchpoint,
                context.slot,
                scopes,
                [*self.rules, *own],
                self.gaps,
                self.blocks,
                self.retention_s,
            )
            self._shapes[key] = shape
        return shape

    def _ids(self, candidates: CandidateColumns, column: str, n: int) -> _Ids:
        """A group's distinct ids, each candidate's index among them and whether some id is
        null; the competition labels from the distinct categories (a pass over the categories,
        not the candidates)."""
        if column != COMPETITOR:
            return _distinct(candidates.get(column), n)
        categories, rows, null = _distinct(candidates.get("category"), n)
        if not categories:
            return [], rows, null
        labels, index, _ = _distinct(
            [self.competing.get(c, c) for c in categories], len(categories)
        )
        return labels, np.where(rows >= 0, index[rows], -1), null

    def plan(
        self, context: RequestContext, candidates: CandidateColumns, own: Sequence[CapRule] = ()
    ) -> Plan:
        """Every lookup the request needs: feature exposures, cap counts, gaps and blocks.
        ``own`` are its campaigns' own caps (each with its ``campaign_id``); they follow the
        global rules in the rule order of the answers."""
        shape = self.shape(context, own)
        n = len(candidates["ad_id"])
        fields, rows, nulls = [], [], []
        for column in shape.columns:
            if column is None:
                fields.append([ANY])
                rows.append(np.zeros(n, dtype=np.int64))
                nulls.append(False)
            else:
                f, r, null = self._ids(candidates, column, n)
                fields.append(f)
                rows.append(r)
                nulls.append(null)
        safe = np.empty((n, len(rows)), dtype=np.int64)
        for g, (r, f, null) in enumerate(zip(rows, fields, nulls, strict=True)):
            safe[:, g] = np.where(r < 0, len(f), r) if null else r
        only: dict[int, int] = {}
        if own:
            campaigns = {c: i for i, c in enumerate(fields[shape.columns.index("campaign_id")])}
            base = len(self.rules)
            for j, rule in enumerate(own):
                only[base + j] = campaigns.get(str(rule.campaign_id), -1)
        return Plan(
            shape,
            micros(context.ts),
            n,
            context.user_id,
            context.household_id,
            context.device_id,
            fields,
            rows,
            only,
            nulls,
            safe,
        )


def plan_request(
    context: RequestContext,
    candidates: CandidateColumns,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    blocks: Sequence[BlockRule],
    retention_s: int,
    competing: Mapping[str, str] | None = None,
) -> Plan:
    """One uncached plan (tests, tools): ``rules`` may include campaigns' own caps."""
    own = [r for r in rules if r.campaign_id is not None]
    plain = [r for r in rules if r.campaign_id is None]
    if [*plain, *own] != list(rules):
        raise ValueError("campaigns' own caps must follow the global rules")
    return Planner(plain, gaps, blocks, retention_s, competing).plan(context, candidates, own)


def impression_families(
    touchpoint: str, slot: str, rules: Sequence[CapRule], gaps: Sequence[GapRule]
) -> list[Family]:
    """Every family an impression on this touchpoint and slot adds to: the feature families
    and the family of each rule whose filter it matches."""
    families: list[Family] = list(FEATURE_FAMILIES)
    for rule in (*rules, *gaps):
        fam = rule.family()
        if fam not in families and fam.matches(touchpoint, slot):
            families.append(fam)
    return families


def impression_writes(
    event_ids: dict[str, str | None],
    touchpoint: str,
    slot: str,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
) -> list[tuple[Family, str, str]]:
    """(family, scope id, field) for every counter an impression increments."""
    out = []
    for fam in impression_families(touchpoint, slot, rules, gaps):
        scope_id = event_ids.get(SCOPE_COLUMN[fam.scope])
        target_col = TARGET_COLUMN[fam.target]
        target_id = ANY if target_col is None else event_ids.get(target_col)
        if scope_id is not None and target_id is not None:
            out.append((fam, scope_id, target_id))
    return out
