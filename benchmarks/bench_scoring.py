"""Scoring-core speed: the whole engine versus LightGBM's own predict on the same rows.

    POLARS_MAX_THREADS=1 taskset -c 0 .venv/bin/python -m benchmarks.bench_scoring \\
        --model data/bench/model_1m --log data/bench/log_1m_c.parquet

For 100 and 500 candidates per request, one request at a time and in batches of 32 requests,
prints latency p50/p99, candidates/s on one core, the time of LightGBM's own predict (one call
per model, both models) on the same feature rows, and the ratio of the engine's candidates/s to
that predict's. The engine's figure covers everything: features from Python lists, both models
(compiled trees when the model directory has them), experience cost, caps logic and ranking.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from engine.config import load_config
from engine.model.bundle import ModelBundle
from engine.model.runtime import LightGBMPredictor
from engine.scoring.scorer import Scorer
from engine.scoring.types import ScoreRequest
from features.logio import read_log

from .bench_features import requests as feature_requests
from .bench_features import timings as timed


def score_requests(log_path: Path, n: int, count: int, seed: int) -> list[ScoreRequest]:
    """``count`` requests of ``n`` candidates from the log, with random exposure counts."""
    log = read_log(log_path)
    return [ScoreRequest(r, c, e) for r, c, e in feature_requests(log, n, count, seed)]


def score_next(scorer: Scorer, cycle: Iterator[list[ScoreRequest]]) -> None:
    scorer.score_batch(next(cycle))


def predict_all(predictors: list[LightGBMPredictor], x: np.ndarray) -> None:
    for p in predictors:
        p.predict(x)


def row(label: str, t: np.ndarray, candidates: int, floor: np.ndarray) -> str:
    p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
    engine = candidates / p50
    model = candidates / np.percentile(floor, 50)
    return (
        f"| {label} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {engine:,.0f} | "
        f"{np.percentile(floor, 50) * 1e3:.2f} | {model:,.0f} | {engine / model:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--runtime", default="auto", help="auto, lleaves or lightgbm")
    args = parser.parse_args()

    bundle = ModelBundle.load(args.model, runtime=args.runtime)
    scorer = Scorer(bundle, load_config())
    plain = {t: LightGBMPredictor(args.model / f"{t}.txt") for t in ("engaged", "negative")}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus; model {bundle.version} "
        f"({bundle.runtime}); {len(bundle.core.names)} features"
    )
    print(
        "| mode | p50 ms | p99 ms | engine candidates/s | LightGBM predict p50 ms "
        "| LightGBM candidates/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in (100, 500):
        reqs = score_requests(args.log, n, 64, seed=n)
        batches = [reqs[k : k + 32] for k in range(0, len(reqs), 32)]
        for label, groups in ((f"1 x {n}", [[r] for r in reqs]), (f"32 x {n}", batches)):
            cycle: Iterator[list[ScoreRequest]] = itertools.cycle(groups)
            t = timed(partial(score_next, scorer, cycle), args.repeat // len(groups[0]) + 10)
            x = bundle.core.batch(
                [r.context for r in groups[0]],
                [r.candidates for r in groups[0]],
                [r.exposures for r in groups[0]],
            ).matrix()
            floor = timed(partial(predict_all, list(plain.values()), x), args.repeat)
            print(row(label, t, n * len(groups[0]), floor))


if __name__ == "__main__":
    main()
