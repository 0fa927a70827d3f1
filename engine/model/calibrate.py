"""Calibration of a model's probabilities, and the reliability that judges it.

Bids priced per impression, per click and per conversion compete through the models'
probabilities, so a probability must mean what it says: of the impressions given 0.02, about
2% engage. ``train`` fits a logistic recalibration (Platt scaling on the log-odds:
``p' = sigmoid(a * logit(p) + b)``) on the early-stopping block, rows no tree was fitted on,
and serving applies it. Two parameters cannot overfit a block of a few thousand rows, and a
monotone map keeps the ranking (AUC) as it was.

Why not isotonic regression: measured on 1M-row synthetic logs (BENCHMARKS.md, "Conversions
and calibration"), an isotonic map fitted on the early-stopping block, or on the first half of
the validation window, made the second half's log loss and calibration error worse than the
raw probabilities (its steps follow the noise of one window), where the logistic map made
both better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.model.metrics import calibration

MIN_ROWS = 200  # fewer rows than this (or one class only): no map, the raw predictions stay
_EPS = 1e-12
_RIDGE = 1.0  # pull toward the identity map (a = 1, b = 0), in rows' worth of evidence


@dataclass(frozen=True)
class Calibration:
    """``p' = sigmoid(a * logit(p) + b)``: the identity at ``a = 1, b = 0``."""

    a: float
    b: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of raw ones."""
        q = np.clip(p, _EPS, 1 - _EPS)
        z = self.a * np.log(q / (1 - q)) + self.b
        out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
        return out

    def to_json(self) -> dict[str, Any]:
        """For ``metadata.json``."""
        return {"method": "platt", "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, doc: Any) -> Calibration:
        """The map ``to_json`` wrote.

        Raises:
            ValueError: another method, or parameters that are not finite numbers.
        """
        if doc.get("method") != "platt":
            raise ValueError(f"unknown method {doc.get('method')!r}")
        a, b = float(doc["a"]), float(doc["b"])
        if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
            raise ValueError("a must be a positive number and b a finite one")
        return cls(a, b)


def fit_calibration(p: np.ndarray, y: np.ndarray) -> Calibration | None:
    """The logistic map of raw predictions ``p`` to outcomes ``y`` (0/1) by Newton's method
    (the log loss with a small ridge toward the identity), or ``None`` when there are too few
    rows or one class only."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    if len(p) < MIN_ROWS or y.min() == y.max():
        return None
    z = np.log(p / (1 - p))
    design = np.stack([z, np.ones_like(z)], axis=1)
    theta = np.array([1.0, 0.0])
    identity = theta.copy()
    for _ in range(50):
        q = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (q - y) + _RIDGE * (theta - identity)
        hess = (design * (q * (1 - q))[:, None]).T @ design + _RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-10:
            break
    if not np.all(np.isfinite(theta)) or theta[0] <= 0:
        return None
    return Calibration(float(theta[0]), float(theta[1]))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over deciles of ``p`` (``metrics.calibration``'s), the
    row-weighted mean of |mean prediction - observed rate| (0: perfectly calibrated)."""
    if len(p) == 0:
        return float("nan")
    deciles = calibration(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64), bins)
    return sum(d["n"] * abs(d["mean_p"] - d["observed"]) for d in deciles) / len(p)
