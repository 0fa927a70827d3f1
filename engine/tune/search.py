"""The multi-objective search over the experience-cost weights, lambda and the reserve.

Each optuna trial samples the tunable parameters in their configured ranges, replays the log
under them (``simulate``), measures the result (``evaluate``) and returns its objectives:
revenue per request (maximise) and the configured user costs (minimise; by default negative
feedback per request: measured here, a third objective such as ads per user-day spreads the
same budget of trials over a surface instead of a curve and finds the constrained optimum
markedly less often). The stated constraints go to the sampler (``constraints_func``), so it learns
where the feasible region is; a trial resting on too few matched logged events counts as
infeasible and is flagged. Studies live in optuna storage: a journal file for one machine
(several processes share it), or an RDB (``postgresql://``, ``sqlite:///``) for several
machines; a study that exists is resumed.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from engine.config import TuningConfig, TuningConstraints
from engine.errors import InvalidArgument
from engine.tune.evaluate import Evaluation, Evaluator
from engine.tune.simulate import Policy, Simulator

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # reset in forked workers (run_trials)
MAXIMIZE, MINIMIZE = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE


def objective_names(tuning: TuningConfig) -> list[str]:
    """Revenue first, then the user costs the config minimises."""
    return ["revenue", *tuning.objectives]


@dataclass(frozen=True)
class Limits:
    """The constraints as absolute bounds (relative ones resolved against the current
    weights), and the evidence a trial needs to be trusted."""

    max_negative: float | None
    max_household_day: dict[str, int]
    min_revenue: float | None
    min_matched: int
    require_fill: bool = True
    negative_z: float = 0.0

    @classmethod
    def resolve(
        cls,
        c: TuningConstraints,
        current: dict[str, float],
        min_matched: int,
        require_fill: bool = True,
    ) -> Limits:
        """Bounds from the stated constraints and the current weights' ``revenue`` and
        ``negative`` (estimates, or true values when checking against the truth)."""
        max_negative = c.max_negative_rate
        if max_negative is None and c.negative_vs_current is not None:
            max_negative = c.negative_vs_current * current["negative"]
        min_revenue = None
        if c.min_revenue_pct is not None:
            min_revenue = c.min_revenue_pct / 100 * current["revenue"]
        households = dict(c.max_ads_per_household_day)
        return cls(max_negative, households, min_revenue, min_matched, require_fill, c.negative_z)

    def trusted(self, e: Evaluation) -> bool:
        """Whether a trial's estimates may be believed: they rest on at least ``min_matched``
        matched logged events (whatever the estimator: the direct method too), and the policy
        shows ads at all (unless ``require_fill`` is off). A policy that never shows an ad is
        estimated from nothing, and its "revenue" of 0 is no recommendation."""
        return e.matched >= self.min_matched and (e.fill_rate > 0 or not self.require_fill)

    def violations(
        self, measures: dict[str, float], e: Evaluation, trusted: bool
    ) -> dict[str, float]:
        """One number per constraint, <= 0 when met (optuna's convention); an untrusted
        trial violates the evidence constraint."""
        out = {"evidence": 0.0 if trusted else 1.0}
        if self.max_negative is not None:
            margin = self.negative_z * measures["negative_se"] if self.negative_z else 0.0
            out["max_negative"] = measures["negative"] + margin - self.max_negative
        if self.min_revenue is not None:
            out["min_revenue"] = self.min_revenue - measures["revenue"]
        for tp, k in self.max_household_day.items():
            out[f"household_day.{tp}"] = e.household_day.get(tp, {"max": 0.0})["max"] - k
        return out

    def apply(self, trial: optuna.Trial, violations: dict[str, float]) -> None:
        """Hand the constraint values to the sampler (``Trial.set_constraint``)."""
        for key, value in violations.items():
            trial.set_constraint(key, value)

    def to_dict(self) -> dict[str, Any]:
        """For reports."""
        return {
            "max_negative_per_request": self.max_negative,
            "max_ads_per_household_day": self.max_household_day,
            "min_revenue_per_request": self.min_revenue,
            "min_matched_events": self.min_matched,
            "require_fill": self.require_fill,
            "negative_z": self.negative_z,
        }


def measures(e: Evaluation, estimator: str, revenue: str = "revenue_smoothed") -> dict[str, float]:
    """Revenue (by the ``revenue`` reward), negative feedback and ad load of an evaluation,
    by one estimator (``truth`` for the true values)."""
    if estimator == "truth":
        assert e.truth is not None
        money, negative, se = e.truth[revenue], e.truth["negative"], 0.0
    else:
        money, negative = e.value(revenue, estimator), e.value("negative", estimator)
        se = e.estimates["negative"][estimator].stderr
        se = se if math.isfinite(se) else math.inf  # one matched event: no interval
    return {
        "revenue": money,
        "negative": negative,
        "negative_se": se,
        "ads_per_user_day": e.ads_per_user_day,
        "ads_per_household_day": e.ads_per_household_day,
    }


class Objective:
    """An optuna objective: parameters -> policy -> replay -> measures."""

    def __init__(
        self,
        simulator: Simulator,
        evaluator: Evaluator,
        tuning: TuningConfig,
        base: Policy,
        limits: Limits,
    ) -> None:
        self.simulator = simulator
        self.evaluator = evaluator
        self.tuning = tuning
        self.base = base
        self.limits = limits
        self.estimator = tuning.estimator if evaluator.logged is not None else "dm"
        self.revenue = "revenue_smoothed" if tuning.revenue == "smoothed" else "revenue"

    def params(self, trial: optuna.Trial) -> dict[str, float]:
        """Sample every tunable parameter in its range."""
        return {
            name: trial.suggest_float(name, low, high)
            for name, (low, high) in self.tuning.ranges.items()
        }

    def evaluate(self, params: dict[str, float]) -> Evaluation:
        """Replay and measure one parameter set."""
        return self.evaluator(self.simulator.run(Policy.from_params(params, self.base)))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        e = self.evaluate(self.params(trial))
        m = measures(e, self.estimator, self.revenue)
        trusted = self.limits.trusted(e)
        trial.set_user_attr("evaluation", e.to_dict())
        trial.set_user_attr("measures", m)
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("flagged", not trusted)
        self.limits.apply(trial, self.limits.violations(m, e, trusted))
        return [m[name] for name in objective_names(self.tuning)]


def sampler(tuning: TuningConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded, aware of the constraints."""
    if tuning.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=20, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=12)


def storage(url: str | None, report_dir: Path) -> optuna.storages.BaseStorage | str:
    """Optuna storage for ``url``: a journal file (default ``<report>/study.journal``, or
    ``journal:///path``), or an RDB URL (``postgresql://`` goes through psycopg 3).

    Raises:
        InvalidArgument: a URL of another scheme.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None or url.startswith("journal://"):
        path = report_dir / "study.journal" if url is None else Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite:///", "postgresql+", "mysql")):
        return url
    raise InvalidArgument(
        "--storage", f"{url!r}: use journal:///path, sqlite:///path or postgresql://"
    )


def open_study(
    store: optuna.storages.BaseStorage | str, name: str, tuning: TuningConfig, seed: int
) -> optuna.Study:
    """Create the study, or load it to resume (same name, same storage)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=store,
        study_name=name,
        sampler=sampler(tuning, seed),
        directions=[MAXIMIZE] + [MINIMIZE] * len(tuning.objectives),
        load_if_exists=True,
    )


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials, in order."""
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
