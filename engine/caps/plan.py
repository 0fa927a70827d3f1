"""Planning what one request needs from a cap store, and what one impression writes.

Planning is pure: it turns a request (or an impression) and the rules into lookups on
*families* of counters. A family (scope x target, optionally filtered) of one scope id (a user,
a household, a device) is one unit of storage whose fields are target ids ("*" for any ad), so a
request reads each family once, for all its candidates' ids. Backends only execute the lookups,
so every backend counts the same way by construction; answers are scattered back to candidates
with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from engine.caps.rules import SCOPE_COLUMN, TARGET_COLUMN, CapRule, Family, FeedbackBlock, GapRule
from features.exposure import EXPOSURE_SCHEMA, WINDOWS_S, count_column, since_column
from features.online import CandidateColumns, RequestContext

US = 1_000_000
ANY = "*"
FEATURE_FAMILIES = tuple(
    Family(scope=s, target=t)
    for s in ("user", "household", "device")
    for t in ("campaign", "advertiser", "any")
)
_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}


def micros(ts: datetime) -> int:
    """Epoch microseconds of an aware datetime."""
    return int(ts.timestamp()) * US + ts.microsecond


@dataclass
class Lookup:
    """One family of one scope id, read for a set of target ids.

    Attributes:
        fields: distinct target ids to read (``["*"]`` for the target any).
        rows_field: per candidate, the index of its field (-1: null id, nothing to read).
        windows: rolling windows in seconds (<= retention), counted exactly.
        day_windows: longer windows in days (0 = lifetime), counted from day buckets.
        last: whether the time of the latest impression is wanted.
    """

    family: Family
    scope_id: str
    fields: list[str]
    rows_field: np.ndarray
    windows: set[int] = field(default_factory=set)
    day_windows: set[int] = field(default_factory=set)
    last: bool = False

    def slots(self) -> list[tuple[str, int]]:
        """The answers per field, in order: windows, day windows, last."""
        out = [("window", w) for w in sorted(self.windows)]
        out += [("days", d) for d in sorted(self.day_windows)]
        return out + ([("since", 0)] if self.last else [])


@dataclass
class Plan:
    """Lookups for one request and where their answers go.

    ``targets``: (output name, column, lookup index, answer kind, window, only) -- every
    candidate of the lookup with a field gets that answer in that column; with ``only`` >= 0,
    only the candidates of that field (a campaign's own cap). Outputs: ``exposures`` (n x 30, the
    feature core's EXPOSURE_SCHEMA), ``rule_counts`` (n x rules, NaN where a rule does not apply),
    ``gap_since`` (n x gaps), and ``blocked`` from ``blocks`` (scope, scope id, target, ids).
    """

    t_us: int
    n: int
    user_id: str
    household_id: str | None
    lookups: list[Lookup] = field(default_factory=list)
    targets: list[tuple[str, int, int, str, int, int]] = field(default_factory=list)
    blocks: list[tuple[str, str, str]] = field(default_factory=list)
    block_fields: list[str] = field(default_factory=list)
    block_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _index: dict[tuple[Family, str], int] = field(default_factory=dict)
    _fields: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)

    def lookup(self, family: Family, scope_id: str, candidates: CandidateColumns) -> int:
        """Index of the family's lookup for this scope id, adding it on first use."""
        key = (family, scope_id)
        if key not in self._index:
            column = TARGET_COLUMN[family.target]
            if column not in self._fields:  # each id column is reduced to fields once
                ids = _ids(candidates, column, self.n)
                self._fields[str(column)] = _fields(ids, column is None, self.n)
            fields, rows_field = self._fields[str(column)]
            self._index[key] = len(self.lookups)
            self.lookups.append(Lookup(family, scope_id, fields, rows_field))
        return self._index[key]


def _fields(ids: list[str | None], any_target: bool, n: int) -> tuple[list[str], np.ndarray]:
    if any_target:
        return [ANY], np.zeros(n, dtype=np.int64)
    keys = np.asarray(["" if i is None else i for i in ids], dtype=object)
    uniq, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.astype(np.int64)
    known = np.asarray([i is not None for i in ids], dtype=bool)
    fields = [str(u) for u in uniq]
    if "" in fields and not all(known):  # "" is the stand-in for null ids: drop it
        drop = fields.index("")
        fields.pop(drop)
        inverse = np.where(inverse > drop, inverse - 1, inverse)
        inverse[~known] = -1
    return fields, inverse


def _ids(candidates: CandidateColumns, column: str | None, n: int) -> list[str | None]:
    values = candidates.get(column) if column is not None else None
    return [None] * n if values is None else list(values)


def plan_request(
    context: RequestContext,
    candidates: CandidateColumns,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    feedback: FeedbackBlock,
    retention_s: int,
) -> Plan:
    """Every lookup the request needs: feature exposures, cap counts, gaps and blocks."""
    n = len(candidates["ad_id"])
    plan = Plan(micros(context.ts), n, context.user_id, context.household_id)

    def lookup(fam: Family) -> int | None:
        scope_id = getattr(context, SCOPE_COLUMN[fam.scope])
        if scope_id is None:
            return None
        return plan.lookup(fam, scope_id, candidates)

    for fam in FEATURE_FAMILIES:
        if (k := lookup(fam)) is None:
            continue
        for window, seconds in WINDOWS_S.items():
            plan.lookups[k].windows.add(seconds)
            col = _EXPOSURE_INDEX[count_column(fam.scope, fam.target, window)]
            plan.targets.append(("exposures", col, k, "window", seconds, -1))
        if fam.target == "campaign":
            plan.lookups[k].last = True
            plan.targets.append(
                ("exposures", _EXPOSURE_INDEX[since_column(fam.scope)], k, "since", 0, -1)
            )
    for j, rule in enumerate(rules):
        if (
            rule.matches(context.touchpoint, context.slot)
            and (k := lookup(rule.family())) is not None
        ):
            only = -1
            if rule.campaign_id is not None:
                if rule.campaign_id not in plan.lookups[k].fields:
                    continue  # none of this campaign's ads is a candidate
                only = plan.lookups[k].fields.index(rule.campaign_id)
            w = rule.window_s
            if w is not None and w <= retention_s:
                plan.lookups[k].windows.add(w)
                plan.targets.append(("rule_counts", j, k, "window", w, only))
            else:
                days = 0 if w is None else -(-w // 86_400)
                plan.lookups[k].day_windows.add(days)
                plan.targets.append(("rule_counts", j, k, "days", days, only))
    for j, gap in enumerate(gaps):
        if (
            gap.matches(context.touchpoint, context.slot)
            and (k := lookup(gap.family())) is not None
        ):
            plan.lookups[k].last = True
            plan.targets.append(("gap_since", j, k, "since", 0, -1))
    _plan_blocks(plan, context, candidates, feedback)
    return plan


def _plan_blocks(
    plan: Plan, context: RequestContext, candidates: CandidateColumns, fb: FeedbackBlock
) -> None:
    column = str(TARGET_COLUMN[fb.target])
    if column not in plan._fields:
        plan._fields[column] = _fields(_ids(candidates, column, plan.n), False, plan.n)
    plan.block_fields, plan.block_rows = plan._fields[column]
    plan.blocks.append(("user", context.user_id, fb.target))
    if fb.household and context.household_id:
        plan.blocks.append(("household", context.household_id, fb.target))


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
