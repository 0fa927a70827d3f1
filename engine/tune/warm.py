"""Where a new study starts: the current weights, and the same mix at other strengths.

The current weights already encode a mix of experience costs; scaling lambda walks along the
revenue / user-cost trade-off that mix makes. The walk starts with the current weights (trial
0) and a few fixed scales; when the objective bounds negative feedback, a short geometric
bisection on lambda then finds the scale at which the current mix just meets that bound. On
the synthetic worlds this point alone comes within a few percent of the constrained optimum,
so the sampler refines from there instead of searching blind. Every point is a trial of the
study (none is thrown away) and the walk runs only when the study is new.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config import TuningConfig
from engine.tune.simulate import Policy

SCALES = (1.0, 0.5, 2.0, 4.0)
BISECTIONS = 5


def _clip(params: dict[str, float], tuning: TuningConfig) -> dict[str, float]:
    return {n: min(max(params[n], lo), hi) for n, (lo, hi) in tuning.ranges.items()}


def scaled(base: Policy, tuning: TuningConfig, factor: float) -> dict[str, float]:
    """The current weights with lambda times ``factor``, clipped to the ranges."""
    params = base.to_params()
    return _clip({**params, "cost_to_money": params["cost_to_money"] * factor}, tuning)


def fixed_starts(base: Policy, tuning: TuningConfig) -> list[dict[str, float]]:
    """The current weights, then lambda at a few fixed scales (duplicates dropped)."""
    out: list[dict[str, float]] = []
    for factor in SCALES:
        p = scaled(base, tuning, factor)
        if p not in out:
            out.append(p)
    return out


def to_the_bound(
    run: Callable[[dict[str, float]], float],
    base: Policy,
    tuning: TuningConfig,
    max_negative: float,
    tried: dict[float, float],
) -> list[dict[str, float]]:
    """Bisect lambda (geometrically) for the current mix's negative feedback to meet
    ``max_negative``; ``run(params)`` evaluates one point and returns its negative feedback
    per request; ``tried`` maps the scales already measured to theirs. Returns the points run."""
    feasible = [f for f, neg in tried.items() if neg <= max_negative]
    infeasible = [f for f, neg in tried.items() if neg > max_negative]
    if not feasible or not infeasible:
        return []
    lo, hi = max(infeasible), min(feasible)  # more lambda, fewer ads, less negative feedback
    if lo > hi:  # not monotone here: nothing to bisect
        return []
    points = []
    for _ in range(BISECTIONS):
        mid = (lo * hi) ** 0.5
        params = scaled(base, tuning, mid)
        points.append(params)
        if run(params) <= max_negative:
            hi = mid
        else:
            lo = mid
    return points
