"""The pure cap decision: from what the store read to which candidates are capped."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.caps.plan import Plan
from engine.caps.rules import CapRule, GapRule
from engine.caps.store import CapReading, Check


def capped(reading: CapReading, rules: Sequence[CapRule], gaps: Sequence[GapRule]) -> np.ndarray:
    """Candidates refused by some applicable rule: a count at its limit, a gap too short, or a
    block from the user's feedback. The strictest rule decides (any refusal caps)."""
    limits = np.asarray([r.limit for r in rules], dtype=np.float64)
    min_gaps = np.asarray([g.min_gap_s for g in gaps], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        over = (reading.rule_counts >= limits).any(axis=1) if len(rules) else False
        close = (reading.gap_since < min_gaps).any(axis=1) if len(gaps) else False
    return np.asarray(over | close | reading.blocked, dtype=bool)


def subject_to_caps(plan: Plan) -> np.ndarray:
    """Candidates some cap, gap or block applies to: the ones to refuse when the store is down
    and the config fails closed."""
    subject = np.zeros(plan.n, dtype=bool)
    for name, _col, k, _kind, _w, only in plan.targets:
        if name in ("rule_counts", "gap_since"):
            rows = plan.lookups[k].rows_field
            subject |= rows >= 0 if only < 0 else rows == only
    return subject | (plan.block_rows >= 0)


def checks(plan: Plan, rules: Sequence[CapRule], gaps: Sequence[GapRule]) -> list[Check]:
    """The atomic checks of ``check_and_record`` for a one-candidate plan, same rules as
    :func:`capped`: a count must stay below its limit, a gap at least its minimum."""
    out = []
    for name, col, k, kind, window, _only in plan.targets:
        if not plan.lookups[k].fields:  # the candidate has no id for this family
            continue
        if name == "rule_counts":
            out.append(Check(k, kind, window, float(rules[col].limit)))
        elif name == "gap_since":
            out.append(Check(k, "since", 0, float(gaps[col].min_gap_s)))
    return out
