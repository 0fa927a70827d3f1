"""Planning what one request needs from a cap store, and what one impression writes.

Planning is pure: it turns a request (or an impression) and the rules into lookups on counters
identified by (family, scope id, target id). Backends only execute the lookups, so the Redis
store, the in-memory store and the tests agree by construction on what is counted. Lookups are
de-duplicated per unique id, and results are scattered back to candidates with numpy.
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
FEATURE_FAMILIES = tuple(
    Family(scope=s, target=t)
    for s in ("user", "household", "device")
    for t in ("campaign", "advertiser", "any")
)
_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}


def micros(ts: datetime) -> int:
    """Epoch microseconds of an aware datetime."""
    return int(ts.timestamp()) * US + ts.microsecond


@dataclass(frozen=True)
class Counter:
    """One counter: a family's impressions of one scope id and one target id (None: any)."""

    family: Family
    scope_id: str
    target_id: str | None


@dataclass
class Plan:
    """Lookups for one request, and where their answers go.

    ``windows[k]`` lists the rolling windows (seconds, <= retention) to count on counter ``k``;
    ``day_windows[k]`` those answered from day buckets (days, or 0 for lifetime); ``last[k]``
    whether the time of the latest exposure is wanted. Answers land in ``out`` arrays via
    ``targets``: (array name, rows, column, counter index, answer kind, window).
    """

    t_us: int
    n: int
    user_id: str = ""
    household_id: str | None = None
    counters: list[Counter] = field(default_factory=list)
    windows: list[set[int]] = field(default_factory=list)
    day_windows: list[set[int]] = field(default_factory=list)
    last: list[bool] = field(default_factory=list)
    blocks: list[tuple[str, str, str, str]] = field(default_factory=list)
    targets: list[tuple[str, np.ndarray, int, int, str, int]] = field(default_factory=list)
    block_rows: list[np.ndarray] = field(default_factory=list)
    _index: dict[Counter, int] = field(default_factory=dict)

    def counter(self, c: Counter) -> int:
        """Index of a counter, adding it on first use."""
        if c not in self._index:
            self._index[c] = len(self.counters)
            self.counters.append(c)
            self.windows.append(set())
            self.day_windows.append(set())
            self.last.append(False)
        return self._index[c]


def _ids(candidates: CandidateColumns, column: str | None, n: int) -> list[str | None]:
    if column is None:
        return [None] * n
    values = candidates.get(column)
    return [None] * n if values is None else list(values)


def _per_unique(
    plan: Plan, family: Family, scope_id: str | None, targets: list[str | None], any_target: bool
) -> list[tuple[int, np.ndarray]]:
    """(counter index, candidate rows) for each distinct target id (null ids get nothing)."""
    if scope_id is None:
        return []
    if any_target:
        return [(plan.counter(Counter(family, scope_id, None)), np.arange(len(targets)))]
    arr = np.asarray([t if t is not None else "" for t in targets], dtype=object)
    known = np.asarray([t is not None for t in targets])
    uniq, inverse = np.unique(arr[known], return_inverse=True)
    rows = np.flatnonzero(known)
    return [
        (plan.counter(Counter(family, scope_id, str(u))), rows[inverse == k])
        for k, u in enumerate(uniq)
    ]


def _add_window(plan: Plan, k: int, window_s: int | None, retention_s: int) -> tuple[str, int]:
    if window_s is not None and window_s <= retention_s:
        plan.windows[k].add(window_s)
        return "window", window_s
    days = 0 if window_s is None else -(-window_s // 86_400)
    plan.day_windows[k].add(days)
    return "days", days


def plan_request(
    context: RequestContext,
    candidates: CandidateColumns,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    feedback: FeedbackBlock,
    retention_s: int,
) -> Plan:
    """Every lookup the request needs: feature exposures, cap counts, gaps and blocks.

    Output arrays: ``exposures`` (n x 30, the feature core's EXPOSURE_SCHEMA), ``rule_counts``
    (n x len(rules), NaN where a rule does not apply), ``gap_since`` (n x len(gaps), seconds
    since the latest exposure, NaN where none or not applicable) and ``blocked`` (n,).
    """
    n = len(candidates["ad_id"])
    plan = Plan(micros(context.ts), n, context.user_id, context.household_id)
    for fam in FEATURE_FAMILIES:
        scope_id = getattr(context, SCOPE_COLUMN[fam.scope])
        targets = _ids(candidates, TARGET_COLUMN[fam.target], n)
        for k, rows in _per_unique(plan, fam, scope_id, targets, fam.target == "any"):
            for window, seconds in WINDOWS_S.items():
                plan.windows[k].add(seconds)
                col = _EXPOSURE_INDEX[count_column(fam.scope, fam.target, window)]
                plan.targets.append(("exposures", rows, col, k, "window", seconds))
            if fam.target == "campaign":
                plan.last[k] = True
                col = _EXPOSURE_INDEX[since_column(fam.scope)]
                plan.targets.append(("exposures", rows, col, k, "since", 0))
    for j, rule in enumerate(rules):
        if not rule.matches(context.touchpoint, context.slot):
            continue
        scope_id = getattr(context, SCOPE_COLUMN[rule.scope])
        targets = _ids(candidates, TARGET_COLUMN[rule.target], n)
        for k, rows in _per_unique(plan, rule.family(), scope_id, targets, rule.target == "any"):
            kind, w = _add_window(plan, k, rule.window_s, retention_s)
            plan.targets.append(("rule_counts", rows, j, k, kind, w))
    for j, gap in enumerate(gaps):
        if not gap.matches(context.touchpoint, context.slot):
            continue
        scope_id = getattr(context, SCOPE_COLUMN[gap.scope])
        targets = _ids(candidates, TARGET_COLUMN[gap.target], n)
        for k, rows in _per_unique(plan, gap.family(), scope_id, targets, gap.target == "any"):
            plan.last[k] = True
            plan.targets.append(("gap_since", rows, j, k, "since", 0))
    _plan_blocks(plan, context, candidates, feedback, n)
    return plan


def _plan_blocks(
    plan: Plan, context: RequestContext, candidates: CandidateColumns, fb: FeedbackBlock, n: int
) -> None:
    scopes = [("user", context.user_id)]
    if fb.household and context.household_id:
        scopes.append(("household", context.household_id))
    targets = _ids(candidates, TARGET_COLUMN[fb.target], n)
    arr = np.asarray([t if t is not None else "" for t in targets], dtype=object)
    for scope, scope_id in scopes:
        for target_id in sorted({t for t in targets if t is not None}):
            plan.blocks.append((scope, scope_id, fb.target, target_id))
            plan.block_rows.append(np.flatnonzero(arr == target_id))


def impression_counters(
    event_ids: dict[str, str | None],
    touchpoint: str,
    slot: str,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
) -> list[Counter]:
    """Every counter an impression adds to: the feature families and each rule's family."""
    families: list[Family] = list(FEATURE_FAMILIES)
    for rule in (*rules, *gaps):
        fam = rule.family()
        if fam not in families and fam.matches(touchpoint, slot):
            families.append(fam)
    out = []
    for fam in families:
        scope_id = event_ids.get(SCOPE_COLUMN[fam.scope])
        target_col = TARGET_COLUMN[fam.target]
        target_id = None if target_col is None else event_ids.get(target_col)
        if scope_id is None or (target_col is not None and target_id is None):
            continue
        out.append(Counter(fam, scope_id, target_id))
    return out
