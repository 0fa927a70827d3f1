"""The pure cap decision: from what the store read to which candidates are capped."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.caps.plan import Plan
from engine.caps.rules import CapRule, GapRule
from engine.caps.store import CapReading, Check
from engine.scoring.types import PodRoom


def capped(reading: CapReading, rules: Sequence[CapRule], gaps: Sequence[GapRule]) -> np.ndarray:
    """Candidates refused by some applicable rule: a count at its limit, a gap too short, or a
    block (the user's feedback, a conversion). The strictest rule decides (any refusal caps)."""
    return refused(reading, *thresholds(rules, gaps))


def thresholds(rules: Sequence[CapRule], gaps: Sequence[GapRule]) -> tuple[np.ndarray, np.ndarray]:
    """The rules' limits and the gaps' minimum seconds, as arrays (see :func:`refused`)."""
    limits = np.asarray([r.limit for r in rules], dtype=np.float64)
    return limits, np.asarray([g.min_gap_s for g in gaps], dtype=np.float64)


def refused(reading: CapReading, limits: np.ndarray, min_gaps: np.ndarray) -> np.ndarray:
    """:func:`capped` with the thresholds computed once (:func:`thresholds`). A NaN (the rule
    does not apply) compares false, without a warning (numpy >= 2)."""
    over = (reading.rule_counts >= limits).any(axis=1) if len(limits) else False
    close = (reading.gap_since < min_gaps).any(axis=1) if len(min_gaps) else False
    return np.asarray(over | close | reading.blocked, dtype=bool)


def separated(reading: CapReading, min_gaps: np.ndarray, which: slice) -> np.ndarray:
    """Candidates a stream-separation gap (``which`` of the gap rules) refuses: some of the
    ones :func:`refused` refuses, whose reason is COMPETITIVE_SEPARATION."""
    gaps = min_gaps[which]
    if not len(gaps):
        return np.zeros(len(reading.gap_since), dtype=bool)
    return np.asarray((reading.gap_since[:, which] < gaps).any(axis=1), dtype=bool)


def subject_to_caps(plan: Plan) -> np.ndarray:
    """Candidates some cap, gap or block applies to: the ones to refuse when the store is down
    and the config fails closed."""
    subject = np.zeros(plan.n, dtype=bool)
    for target in plan.shape.targets:
        if target.output != "exposures":
            subject |= plan.applies(target)
    return subject | plan.block_subject()


def checks(
    plan: Plan,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    separating: slice = slice(0, 0),
) -> list[Check]:
    """The atomic checks of ``check_and_record`` for a one-candidate plan, same rules as
    :func:`capped`: a count must stay below its limit, a gap at least its minimum
    (``separating``: which gaps are stream separation)."""
    apart = set(range(len(gaps))[separating])
    out = []
    for target in plan.shape.targets:
        if target.output == "exposures" or not plan.applies(target)[0]:
            continue  # the candidate has no id for this family, or is not the rule's campaign
        if target.output == "rule_counts":
            limit = float(rules[target.index].limit)
            out.append(Check(target.group, target.column, "count", limit))
        else:
            gap = float(gaps[target.index].min_gap_s)
            out.append(Check(target.group, target.column, "since", gap, target.index in apart))
    return out


def pod_room(plan: Plan, reading: CapReading, limits: np.ndarray) -> PodRoom | None:
    """What each candidate's rules and gaps leave for the ads of its pod: per constraint its
    counter (the candidate's id in the rule's family; -1 where it does not apply) and how
    many more exposures it admits (a gap: one). ``None`` when no rule or gap applies."""
    targets = [t for t in plan.shape.targets if t.output != "exposures"]
    if not targets:
        return None
    keys = np.full((plan.n, len(targets)), -1, dtype=np.int64)
    room = np.ones((plan.n, len(targets)))
    for c, target in enumerate(targets):
        keys[:, c] = np.where(plan.applies(target), plan.rows[target.group], -1)
        if target.output == "rule_counts":
            room[:, c] = limits[target.index] - reading.rule_counts[:, target.index]
    return PodRoom(keys, room)
