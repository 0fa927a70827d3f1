"""From a study's trials to the frontier and the recommendation.

The recommendation answers the stated objective: the most revenue (by the trials' estimates)
among the trials that meet every constraint and rest on enough evidence. The Pareto frontier
is the set of trusted trials no other trusted trial beats on revenue, negative feedback and ad
load at once, so a user can see what each unit of user cost buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna


@dataclass(frozen=True)
class TrialRecord:
    """One complete trial: parameters, objectives and everything measured."""

    number: int
    params: dict[str, float]
    objectives: dict[str, float]  # revenue, negative, ads_per_user_day, ads_per_household_day
    evaluation: dict[str, Any]
    feasible: bool
    flagged: bool
    seconds: float

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        """Read a trial the objective filled in."""
        cons = trial.constraints.values() if trial.constraints else [1.0]
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        return cls(
            trial.number,
            dict(trial.params),
            dict(trial.user_attrs.get("measures", {})),
            trial.user_attrs.get("evaluation", {}),
            all(c <= 0 for c in cons),
            bool(trial.user_attrs.get("flagged", False)),
            seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """For reports."""
        return {
            "trial": self.number,
            "params": self.params,
            "objectives": self.objectives,
            "feasible": self.feasible,
            "flagged": self.flagged,
        }


def recommend(records: list[TrialRecord]) -> TrialRecord | None:
    """The feasible, trusted trial with the most revenue (``None`` if there is none)."""
    ok = [r for r in records if r.feasible and not r.flagged]
    return max(ok, key=lambda r: (r.objectives["revenue"], -r.number)) if ok else None


def _dominates(a: TrialRecord, b: TrialRecord, costs: list[str]) -> bool:
    x, y = a.objectives, b.objectives
    no_worse = x["revenue"] >= y["revenue"] and all(x[c] <= y[c] for c in costs)
    better = x["revenue"] > y["revenue"] or any(x[c] < y[c] for c in costs)
    return no_worse and better


def frontier(records: list[TrialRecord], costs: list[str]) -> list[TrialRecord]:
    """The trusted trials no other trusted trial beats on revenue and every cost in
    ``costs`` at once, by revenue."""
    trusted = [r for r in records if not r.flagged]
    front = [r for r in trusted if not any(_dominates(o, r, costs) for o in trusted)]
    return sorted(front, key=lambda r: r.objectives["revenue"])
