"""Off-policy estimates of a new policy's value from logs of another (pure numpy).

The data are candidate rows grouped into requests. The logging policy showed row ``a`` with
marginal probability ``propensity[a]`` (``shown[a]`` says whether it did; ``reward[a]`` is what
followed, read only where shown). The target policy shows row ``a`` with probability
``target[a]`` (0 or 1 for a deterministic engine). A policy's value is the expected total reward
per request, ``E[sum_a target[a] r(a)]``. Rewards are taken as additive over the ads of a
request (one ad does not change another's outcome), which makes the marginal propensities
sufficient.

* IPS: ``mean_i sum_a w r`` with ``w = target shown / propensity``; unbiased where every row the
  target shows had a positive logging propensity.
* Self-normalised IPS: the weighted reward per shown ad, ``sum w r / sum w``, times the
  target's own (known) ads per request; slightly biased, far less variance; delta-method
  interval.
* Doubly robust: the reward model's value of the target plus the weighted model errors;
  unbiased if either the propensities or the reward model are right.

Estimates carry a normal 95% interval from the per-request contributions, the number of matched
events (rows the logger showed that the target shows too) and the weights' effective sample
size. Per-request contributions are kept so that a streaming caller can compute them chunk by
chunk and concatenate (:class:`Contributions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from engine.errors import InvalidArgument

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A policy value with its 95% interval.

    Attributes:
        value: the estimate (expected reward per request).
        low, high: the 95% normal interval.
        stderr: the standard error.
        requests: requests averaged over.
        matched: logged events the estimate rests on (shown, and shown by the target too).
        ess: effective sample size of the weights, ``(sum w)^2 / sum w^2`` (0 without weights).
    """

    value: float
    low: float
    high: float
    stderr: float
    requests: int
    matched: int
    ess: float

    def covers(self, truth: float) -> bool:
        """Whether the interval contains ``truth``."""
        return self.low <= truth <= self.high

    def to_dict(self) -> dict[str, float | int]:
        """Plain numbers, for JSON reports."""
        return asdict(self)


def unusable_propensities(shown: np.ndarray, propensity: np.ndarray) -> int:
    """How many shown rows have no usable propensity (null, zero or above 1)."""
    p = propensity[shown]
    return int((~np.isfinite(p) | (p <= 0) | (p > 1)).sum())


def propensity_problem(unusable: int, shown: int) -> str:
    """Why off-policy estimates cannot be made of ``unusable`` of ``shown`` rows."""
    return (
        f"{unusable:,} of {shown:,} shown row(s) without a propensity in (0, 1]: IPS, "
        "self-normalised IPS and doubly robust estimates divide by the logging policy's "
        "probability of every shown row"
    )


@dataclass(frozen=True)
class LoggedRows:
    """Candidate rows of requests in request order: ``group`` is non-decreasing from 0.

    Raises (on construction):
        InvalidArgument: arrays of unequal length, or a shown row without a usable propensity
            (null, zero or above 1): IPS, self-normalised IPS and doubly robust all divide by it.
    """

    group: np.ndarray
    shown: np.ndarray
    propensity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.group)
        if len(self.shown) != n or len(self.propensity) != n:
            raise InvalidArgument("rows", "group, shown and propensity differ in length")
        bad = unusable_propensities(self.shown, self.propensity)
        if bad:
            raise InvalidArgument("propensity", propensity_problem(bad, int(self.shown.sum())))

    @property
    def requests(self) -> int:
        """Number of requests."""
        return int(self.group[-1]) + 1 if len(self.group) else 0

    def per_request(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over each request's rows."""
        return np.bincount(self.group, weights=values, minlength=self.requests)

    def weights(self, target: np.ndarray) -> np.ndarray:
        """Importance weights ``target shown / propensity`` (0 where not shown)."""
        w = np.zeros(len(self.group))
        s = self.shown
        w[s] = target[s] / self.propensity[s]
        return w

    def observed(self, reward: np.ndarray) -> np.ndarray:
        """The reward where shown, 0 elsewhere (unshown rows have no outcome)."""
        return np.where(self.shown, np.nan_to_num(np.asarray(reward, dtype=np.float64)), 0.0)


@dataclass(frozen=True)
class Contributions:
    """Per-request sums behind every estimator, for one reward.

    Requests of several chunks concatenate (:meth:`concat`); estimates come from the whole.
    ``dr`` is NaN-free only when a reward model was given; ``truth`` only for synthetic logs.
    """

    ips: np.ndarray
    weight: np.ndarray
    weight_sq: np.ndarray
    dr: np.ndarray
    logged: np.ndarray
    target_ads: np.ndarray
    matched: np.ndarray
    shown: np.ndarray
    truth: np.ndarray

    @classmethod
    def of(
        cls,
        rows: LoggedRows,
        target: np.ndarray,
        reward: np.ndarray,
        predicted: np.ndarray | None = None,
        expected: np.ndarray | None = None,
    ) -> Contributions:
        """Contributions of ``rows`` for a target policy and one reward.

        Args:
            rows: the logged rows.
            target: per row, the target's probability of showing it.
            reward: per row, the observed reward (read where shown).
            predicted: per row, a reward model's expected reward (for doubly robust).
            expected: per row, the true expected reward (synthetic logs only).
        """
        t = np.asarray(target, dtype=np.float64)
        w = rows.weights(t)
        r = rows.observed(reward)
        nan = np.full(len(t), np.nan)
        pred = nan if predicted is None else np.asarray(predicted, dtype=np.float64)
        dr = t * pred + w * (r - np.where(rows.shown, pred, 0.0))
        per = rows.per_request
        return cls(
            ips=per(w * r),
            weight=per(w),
            weight_sq=per(w * w),
            dr=per(dr),
            logged=per(r),
            target_ads=per(t),
            matched=per(((t > 0) & rows.shown).astype(np.float64)),
            shown=per(rows.shown.astype(np.float64)),
            truth=per(t * (nan if expected is None else expected)),
        )

    @classmethod
    def concat(cls, parts: Sequence[Contributions]) -> Contributions:
        """The contributions of all requests of ``parts``, in order."""
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    @property
    def requests(self) -> int:
        """Number of requests."""
        return len(self.ips)

    def moments(self) -> Moments:
        """The sums the estimators need (what a streaming caller keeps instead)."""
        return Moments.of(self)

    def ips_estimate(self) -> Estimate:
        """Inverse propensity scoring."""
        return self.moments().ips_estimate()

    def snips_estimate(self, ads_per_request: float | None = None) -> Estimate:
        """See :meth:`Moments.snips_estimate`."""
        return self.moments().snips_estimate(ads_per_request)

    def dr_estimate(self) -> Estimate:
        """Doubly robust (NaN when no reward model was given)."""
        return self.moments().dr_estimate()

    def on_policy(self) -> Estimate:
        """The logging policy's own value: the mean observed reward per request."""
        return self.moments().on_policy()

    def true_value(self) -> float:
        """The target's true value (NaN unless expected rewards were given)."""
        return self.moments().true_value()


@dataclass
class Moments:
    """Per-request contributions reduced to the sums every estimator needs: counts, sums,
    sums of squares and the one cross product self-normalised IPS needs. Chunks add up
    (``+=``), so a replay of any length keeps a fixed amount of memory per reward; the
    estimates equal those of the concatenated contributions up to rounding.

    Attributes:
        requests: requests.
        ips, dr, logged, weight: sums of the per-request values; ``*_sq`` their squares.
        ips_weight: sum of per-request ``ips * weight``.
        weight_sq: sum over rows of the squared weights (for the effective sample size).
        target_ads, matched, shown: sums of the per-request counts.
        truth: sum of the per-request true values (NaN without a truth).
    """

    requests: int = 0
    ips: float = 0.0
    ips_sq: float = 0.0
    dr: float = 0.0
    dr_sq: float = 0.0
    logged: float = 0.0
    logged_sq: float = 0.0
    weight: float = 0.0
    weight_sum_sq: float = 0.0
    ips_weight: float = 0.0
    weight_sq: float = 0.0
    target_ads: float = 0.0
    matched: float = 0.0
    shown: float = 0.0
    truth: float = 0.0

    @classmethod
    def of(cls, c: Contributions) -> Moments:
        """The sums of one chunk's contributions."""

        def total(x: np.ndarray) -> float:
            return float(x.sum())

        return cls(
            requests=c.requests,
            ips=total(c.ips),
            ips_sq=total(c.ips * c.ips),
            dr=total(c.dr),
            dr_sq=total(c.dr * c.dr),
            logged=total(c.logged),
            logged_sq=total(c.logged * c.logged),
            weight=total(c.weight),
            weight_sum_sq=total(c.weight * c.weight),
            ips_weight=total(c.ips * c.weight),
            weight_sq=total(c.weight_sq),
            target_ads=total(c.target_ads),
            matched=total(c.matched),
            shown=total(c.shown),
            truth=total(c.truth),
        )

    def __iadd__(self, other: Moments) -> Moments:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def _ess(self) -> float:
        return self.weight**2 / self.weight_sq if self.weight_sq > 0 else 0.0

    def _mean(self, total: float, squares: float, matched: int, ess: float) -> Estimate:
        n = self.requests
        value = total / n if n else float("nan")
        se = _stderr(squares - total * value, n) if n > 1 else float("nan")
        return Estimate(value, value - Z95 * se, value + Z95 * se, se, n, matched, ess)

    def ips_estimate(self) -> Estimate:
        """Inverse propensity scoring."""
        return self._mean(self.ips, self.ips_sq, int(self.matched), self._ess())

    def snips_estimate(self, ads_per_request: float | None = None) -> Estimate:
        """Self-normalised IPS: the weighted reward per shown ad times the target's ads per
        request, by default the target's mean over the requests (right when the rows are
        every candidate of a request); give it when the log holds only the shown candidates.
        Its interval is the delta method's: the spread of ``(ips - ratio * weight) / mean
        weight`` over requests."""
        n, matched = self.requests, int(self.matched)
        if n < 2 or self.weight <= 0:
            nan = float("nan")
            return Estimate(nan, nan, nan, nan, n, matched, 0.0)
        ratio = self.ips / self.weight
        ads = self.target_ads / n if ads_per_request is None else ads_per_request
        mean_weight = self.weight / n
        # sum of (ips - ratio w)^2; its plain sum is 0 by the choice of ratio
        squares = self.ips_sq - 2 * ratio * self.ips_weight + ratio**2 * self.weight_sum_sq
        se = _stderr(squares / mean_weight**2, n) * ads
        value = ratio * ads
        return Estimate(value, value - Z95 * se, value + Z95 * se, se, n, matched, self._ess())

    def dr_estimate(self) -> Estimate:
        """Doubly robust (NaN when no reward model was given)."""
        return self._mean(self.dr, self.dr_sq, int(self.matched), self._ess())

    def on_policy(self) -> Estimate:
        """The logging policy's own value: the mean observed reward per request."""
        return self._mean(self.logged, self.logged_sq, int(self.shown), 0.0)

    def true_value(self) -> float:
        """The target's true value (NaN unless expected rewards were given)."""
        return self.truth / self.requests if self.requests else float("nan")


def _stderr(centred_squares: float, n: int) -> float:
    """Standard error of a mean from the sum of squared deviations (rounding can leave a
    tiny negative sum where every value is equal: that is zero spread)."""
    return float(np.sqrt(max(centred_squares, 0.0) / (n - 1) / n))


def ips(rows: LoggedRows, target: np.ndarray, reward: np.ndarray) -> Estimate:
    """Inverse propensity scoring estimate of the target's value."""
    return Contributions.of(rows, target, reward).ips_estimate()


def snips(rows: LoggedRows, target: np.ndarray, reward: np.ndarray) -> Estimate:
    """Self-normalised IPS estimate of the target's value."""
    return Contributions.of(rows, target, reward).snips_estimate()


def doubly_robust(
    rows: LoggedRows, target: np.ndarray, reward: np.ndarray, predicted: np.ndarray
) -> Estimate:
    """Doubly robust estimate of the target's value with a reward model's predictions."""
    return Contributions.of(rows, target, reward, predicted).dr_estimate()


def on_policy(rows: LoggedRows, reward: np.ndarray) -> Estimate:
    """The logging policy's value: the mean observed reward per request."""
    return Contributions.of(rows, rows.shown.astype(np.float64), reward).on_policy()


def direct_method(group: np.ndarray, target: np.ndarray, predicted: np.ndarray) -> Estimate:
    """The reward model's own value of the target: needs no propensities, and is exactly as
    biased as the model (its interval covers only the spread over requests)."""
    n = int(group[-1]) + 1 if len(group) else 0
    c = np.bincount(group, weights=np.asarray(target) * np.asarray(predicted), minlength=n)
    value = float(c.mean()) if n else float("nan")
    se = float(c.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Estimate(value, value - Z95 * se, value + Z95 * se, se, n, 0, 0.0)
