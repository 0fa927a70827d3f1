"""On a synthetic log: how far the recommendation falls short of the true optimum.

The stated objective (most revenue under the constraints) is solved again with the
generator's true expected rewards in place of the estimates: a seeded single-objective TPE
search over the same ranges with the true constraint values (relative constraints resolved
against the current weights' true values), started from the current and the recommended
weights and the fixed scales of lambda the tuner starts with. Every trial of the tuner's own
study was also measured against the truth, so the
true optimum is the best truly feasible point of both. ``regret_pct`` is the share of that
optimum's revenue the recommendation gives up (0 when it matches or beats it).
"""

from __future__ import annotations

from typing import Any

import optuna

from engine.config import TuningConfig
from engine.tune.choice import TrialRecord
from engine.tune.evaluate import Evaluation
from engine.tune.search import Limits, Objective, measures
from engine.tune.warm import fixed_starts


def _truth_of(record: TrialRecord) -> dict[str, float] | None:
    truth = record.evaluation.get("truth")
    if not truth:
        return None
    return {**truth, "ads_per_user_day": record.evaluation["ads_per_user_day"]}


def _household(record: TrialRecord) -> dict[str, dict[str, float]]:
    return dict(record.evaluation.get("household_day", {}))


def _feasible(limits: Limits, truth: dict[str, float], household: dict[str, Any]) -> bool:
    if limits.max_negative is not None and truth["negative"] > limits.max_negative:
        return False
    if limits.min_revenue is not None and truth["revenue"] < limits.min_revenue:
        return False
    return all(
        household.get(tp, {"max": 0})["max"] <= k for tp, k in limits.max_household_day.items()
    )


def true_optimum(
    objective: Objective,
    tuning: TuningConfig,
    current: Evaluation,
    records: list[TrialRecord],
    chosen: TrialRecord | None,
    trials: int,
    seed: int,
) -> dict[str, Any]:
    """The true optimum and the recommendation's regret against it (see the module doc)."""
    truth_now = measures(current, "truth")
    limits = Limits.resolve(tuning.constraints, truth_now, 0)

    def solve(trial: optuna.Trial) -> float:
        e = objective.evaluate(objective.params(trial))
        m = measures(e, "truth")
        limits.apply(trial, limits.violations(m, e, True))
        trial.set_user_attr("truth", m)
        trial.set_user_attr("household_day", e.household_day)
        return m["revenue"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=12),
    )
    for params in fixed_starts(objective.base, tuning):  # the tuner's own fixed start
        study.enqueue_trial(params)
    if chosen is not None:
        study.enqueue_trial(chosen.params)
    study.optimize(solve, n_trials=trials)
    candidates = [
        (t.user_attrs["truth"], t.user_attrs["household_day"], dict(t.params), "truth search")
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    for r in records:
        truth = _truth_of(r)
        if truth is not None:
            candidates.append((truth, _household(r), r.params, f"tuner trial {r.number}"))
    feasible = [c for c in candidates if _feasible(limits, c[0], c[1])]
    best = max(feasible, key=lambda c: c[0]["revenue"]) if feasible else None
    out: dict[str, Any] = {
        "search_trials": trials,
        "limits": limits.to_dict(),
        "current": truth_now,
        "optimum": None
        if best is None
        else {"truth": best[0], "params": best[2], "found_by": best[3]},
    }
    if chosen is not None and best is not None:
        got = _truth_of(chosen)
        assert got is not None
        top = best[0]["revenue"]
        out["chosen"] = got
        out["chosen_feasible"] = _feasible(limits, got, _household(chosen))
        out["regret_pct"] = max(0.0, 100 * (top - got["revenue"]) / top) if top > 0 else 0.0
        estimates = chosen.evaluation["estimates"]
        out["chosen_estimates_cover_truth"] = {
            reward: estimates[reward][objective.estimator]["low"]
            <= got[reward]
            <= estimates[reward][objective.estimator]["high"]
            for reward in ("revenue", "negative")
        }
    return out
