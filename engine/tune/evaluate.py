"""What a simulated policy achieves: off-policy estimates and its own ad load.

Revenue, engagements and negative feedback per request are estimated from the logged outcomes
(``engine.ope``: doubly robust with the engine's predictions as the reward model, and
self-normalised IPS), each with a 95% interval; on a synthetic log the true values come from the
generator's truth. Ad load and fill rate need no estimate: they are the policy's own decisions.
Without propensities only the direct method (the reward model alone) is possible, and only when
the caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.ope import Contributions, Estimate, LoggedRows, direct_method
from engine.tune.data import TuningData
from features.schema import TOUCHPOINTS

REWARDS = ("revenue", "revenue_smoothed", "negative", "engagement")


@dataclass(frozen=True)
class Evaluation:
    """A policy's measures.

    Attributes:
        estimates: per reward (revenue, revenue_smoothed, negative, engagement), per
            estimator, per request (see ``engine.tune.data`` for the smoothed revenue).
        truth: per reward, the true value (synthetic logs), else ``None``.
        ads_per_user_day: mean ads per active user and UTC day.
        ads_per_household_day: mean ads per active household and UTC day (a user without a
            household counts as one).
        household_day: per touchpoint, ``mean`` and ``max`` ads per active household-day.
        fill_rate: share of requests with an ad.
        ads_per_request: mean ads per request.
        matched: logged events the estimates rest on (shown by the log and by the policy).
        ess: effective sample size of the importance weights.
    """

    estimates: dict[str, dict[str, Estimate]]
    truth: dict[str, float] | None
    ads_per_user_day: float
    ads_per_household_day: float
    household_day: dict[str, dict[str, float]]
    fill_rate: float
    ads_per_request: float
    matched: int
    ess: float

    def value(self, reward: str, estimator: str) -> float:
        """One estimate's value."""
        return self.estimates[reward][estimator].value

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {
            "estimates": {
                r: {k: e.to_dict() for k, e in by.items()} for r, by in self.estimates.items()
            },
            "truth": self.truth,
            "ads_per_user_day": self.ads_per_user_day,
            "ads_per_household_day": self.ads_per_household_day,
            "household_day": self.household_day,
            "fill_rate": self.fill_rate,
            "ads_per_request": self.ads_per_request,
            "matched": self.matched,
            "ess": self.ess,
        }


class Evaluator:
    """Measures rank vectors of one prepared log.

    Raises (on construction):
        InvalidArgument: the log's shown rows lack propensities and ``direct`` is off; the
            message says which estimators need them and how to fall back.
    """

    def __init__(self, data: TuningData, direct: bool = False) -> None:
        self.data = data
        self.direct = direct
        self.logged: LoggedRows | None = None
        try:
            self.logged = LoggedRows(data.owner, data.shown, data.propensity)
        except InvalidArgument as exc:
            if not direct:
                raise InvalidArgument(
                    "propensity",
                    f"{exc.problem}. Tuning estimates each trial off-policy (self-normalised "
                    "IPS and doubly robust). Log the propensities, or pass --direct-method to "
                    "fall back to the model's own predictions (biased as the model is).",
                ) from exc
        self.user_days = len(np.unique(data.user_day))
        self.household_days = len(np.unique(data.household_day))
        self.active = {
            TOUCHPOINTS[tp]: len(np.unique(data.household_day[data.touchpoint == tp]))
            for tp in np.unique(data.touchpoint)
        }

    @property
    def estimators(self) -> tuple[str, ...]:
        """The estimators this log allows."""
        return ("dm",) if self.logged is None else ("dr", "snips", "ips")

    def __call__(self, rank: np.ndarray) -> Evaluation:
        """The measures of a policy that gives the rows ``rank``."""
        d = self.data
        target = (rank > 0).astype(np.float64)
        estimates: dict[str, dict[str, Estimate]] = {}
        truth: dict[str, float] | None = {} if d.truth is not None else None
        ess = 0.0
        matched = int(np.count_nonzero(d.shown & (target > 0)))  # by every estimator
        for r in REWARDS:
            if self.logged is None:
                estimates[r] = {"dm": direct_method(d.owner, target, d.predicted[r])}
                continue
            expected = d.truth[r] if d.truth is not None else None
            c = Contributions.of(self.logged, target, d.rewards[r], d.predicted[r], expected)
            estimates[r] = {
                "dr": c.dr_estimate(),
                "snips": c.snips_estimate(),
                "ips": c.ips_estimate(),
            }
            if truth is not None:
                truth[r] = c.true_value()
            ess = estimates[r]["dr"].ess
        if self.logged is None and d.truth is not None and truth is not None:
            truth = {r: float(np.bincount(d.owner, target * d.truth[r]).mean()) for r in REWARDS}
        selected = target > 0
        per_request = np.bincount(d.owner, weights=target, minlength=d.requests)
        return Evaluation(
            estimates=estimates,
            truth=truth,
            ads_per_user_day=float(selected.sum() / max(self.user_days, 1)),
            ads_per_household_day=float(selected.sum() / max(self.household_days, 1)),
            household_day=self._household_day(selected),
            fill_rate=float((per_request > 0).mean()),
            ads_per_request=float(per_request.mean()),
            matched=matched,
            ess=ess,
        )

    def _household_day(self, selected: np.ndarray) -> dict[str, dict[str, float]]:
        d = self.data
        out = {}
        for name, active in self.active.items():
            on = selected & (d.touchpoint == TOUCHPOINTS.index(name))
            counts = np.bincount(d.household_day[on]) if on.any() else np.zeros(1)
            out[name] = {"mean": float(on.sum() / max(active, 1)), "max": float(counts.max())}
        return out
