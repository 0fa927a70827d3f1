"""The floor: what the raw model call alone costs on the replay's own rows.

The engine's candidates/s divided by the floor's is the ratio a replay reports: above 1, the
whole engine (decoding, caps, features, the models, rules, ranking, encoding) decides faster
per candidate than LightGBM's own ``Booster.predict`` of the same models scores the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.model.bundle import ModelBundle
from engine.model.runtime import LightGBMPredictor, Predictor
from engine.scoring.types import ScoreRequest


@dataclass(frozen=True)
class Floor:
    """Model-only throughput on the replay's rows, grouped as the engine grouped them.

    Attributes:
        candidates: rows predicted.
        model_seconds: LightGBM ``Booster.predict`` of every model, one call per group.
        runtime_seconds: the same with the runtime the engine serves with (e.g. compiled).
        runtime: that runtime's name.
    """

    candidates: int
    model_seconds: float
    runtime_seconds: float
    runtime: str

    @property
    def model_candidates_per_s(self) -> float:
        """Candidates per second of the raw LightGBM call."""
        return self.candidates / self.model_seconds if self.model_seconds else float("nan")

    @property
    def runtime_candidates_per_s(self) -> float:
        """Candidates per second of the serving runtime's call."""
        return self.candidates / self.runtime_seconds if self.runtime_seconds else float("nan")


def measure_floor(
    bundle: ModelBundle, requests: Sequence[ScoreRequest], group: int, repeat: int = 3
) -> Floor:
    """Time the models on the features of ``requests``, ``group`` requests per call (best
    of ``repeat`` passes; feature building is outside the timed region)."""
    group = max(1, group)
    matrices = [
        bundle.core.batch(
            [r.context for r in requests[k : k + group]],
            [r.candidates for r in requests[k : k + group]],
            [r.exposures for r in requests[k : k + group]],
        ).matrix()
        for k in range(0, len(requests), group)
    ]
    targets = bundle.metadata["targets"]
    raw: list[Predictor] = [
        LightGBMPredictor(bundle.directory / e["model"]) for e in targets.values()
    ]
    serving: list[Predictor] = [
        p for p in (bundle.engaged, bundle.negative, bundle.converted) if p is not None
    ]
    return Floor(
        sum(len(m) for m in matrices),
        _best(raw, matrices, repeat),
        _best(serving, matrices, repeat),
        bundle.runtime,
    )


def _best(predictors: list[Predictor], matrices: list[np.ndarray], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for x in matrices:
            for p in predictors:
                p.predict(x)
        best = min(best, time.perf_counter() - start)
    return best
