"""Scoring-core speed: the whole engine versus LightGBM's own predict on the same rows.

    POLARS_MAX_THREADS=1 taskset -c 0 .venv/bin/python -m benchmarks.bench_scoring \\
        --model data/bench/model_1m --log data/bench/log_1m_c.parquet

For 100 and 500 candidates per request, one request at a time and in batches of 32 requests,
prints latency p50/p99, the p50 of each stage (features, model, rank), candidates/s on one
core, the time of LightGBM's own predict (one call per model, both models) on the same feature
rows, and the ratio of the engine's candidates/s to that predict's. The engine's figure covers
everything: features from Python lists, both models (compiled trees when the model directory
has them), experience cost, caps logic and ranking.

``--app`` first times ``App.decide`` on 1 x 100 with the in-memory cap store (no Redis): p50 of
each stage (caps, then the scoring core's) and of the whole call. ``--app-gaps 0,2,10`` times
it with a pause of each length between calls (wall p50 and the process's CPU per call): what a
lone request costs against one of a steady stream.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from engine.app import App, build_app
from engine.config import load_config
from engine.model.bundle import ModelBundle
from engine.model.runtime import LightGBMPredictor
from engine.scoring.scorer import Scorer
from engine.scoring.types import ScoreRequest
from engine.timing import CallbackTimer, StageTimer
from features.logio import read_log

from .bench_features import requests as feature_requests
from .bench_features import timings as timed
from .machine import describe


def score_requests(log_path: Path, n: int, count: int, seed: int) -> list[ScoreRequest]:
    """``count`` requests of ``n`` candidates from the log, with random exposure counts."""
    log = read_log(log_path)
    return [ScoreRequest(r, c, e) for r, c, e in feature_requests(log, n, count, seed)]


def score_next(scorer: Scorer, cycle: Iterator[list[ScoreRequest]], timer: StageTimer) -> None:
    scorer.score_batch(next(cycle), timer)


def observe(stages: dict[str, list[float]], stage: str, seconds: float) -> None:
    stages[stage].append(seconds)


def predict_all(predictors: list[LightGBMPredictor], x: np.ndarray) -> None:
    for p in predictors:
        p.predict(x)


def row(
    label: str,
    t: np.ndarray,
    stages: dict[str, list[float]],
    candidates: int,
    floor: np.ndarray,
) -> str:
    p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
    split = " / ".join(f"{np.median(stages[s]) * 1e3:.2f}" for s in STAGES)
    engine = candidates / p50
    model = candidates / np.percentile(floor, 50)
    return (
        f"| {label} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {split} | {engine:,.0f} | "
        f"{np.percentile(floor, 50) * 1e3:.2f} | {model:,.0f} | {engine / model:.2f} |"
    )


STAGES = ("features", "model", "rank")


def _memory_app(model: Path) -> App:
    """The shipped config's app with the in-memory cap store (no Redis)."""
    config = load_config()
    store = config.store.model_copy(update={"url": "memory://"})
    return build_app(config.model_copy(update={"store": store}), model)


def app_stages(model: Path, log: Path, repeat: int) -> str:
    """``App.decide`` on 1 x 100, in-memory cap store: a line of p50 ms per stage and total."""
    app = _memory_app(model)
    stages: dict[str, list[float]] = defaultdict(list)
    timer = CallbackTimer(partial(observe, stages))
    cycle = itertools.cycle(score_requests(log, 100, 64, seed=100))
    try:
        t = timed(lambda: app.decide(next(cycle), timer=timer), repeat)
    finally:
        app.close()
    split = ", ".join(f"{s} {np.median(v) * 1e3:.2f}" for s, v in stages.items())
    return f"App.decide 1 x 100 (memory store) p50 ms: {split}; total {np.median(t) * 1e3:.2f}"


def app_gaps(model: Path, log: Path, repeat: int, gaps_ms: list[float]) -> list[str]:
    """``App.decide`` on 1 x 100 (memory store) with a pause of each length between calls, in
    turn, twice: p50 wall time and the process's mean CPU time per call. A pause lets the
    caches go cold: a lone request costs more than one of a steady stream."""
    app = _memory_app(model)
    requests = score_requests(log, 100, 64, seed=100)
    out = []
    try:
        for request in requests:  # warm
            app.decide(request)
        for gap_ms in [*gaps_ms, *gaps_ms]:
            wall, cpu = np.empty(repeat), np.empty(repeat)
            for i in range(repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                app.decide(requests[i % len(requests)])
                wall[i] = time.perf_counter() - start
                cpu[i] = time.process_time() - start_cpu
                if gap_ms:
                    time.sleep(gap_ms / 1e3)
            out.append(
                f"App.decide 1 x 100 (memory store), {gap_ms:g} ms between calls: wall p50 "
                f"{np.median(wall) * 1e3:.2f} ms, CPU mean {np.mean(cpu) * 1e3:.2f} ms"
            )
    finally:
        app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--runtime", default="auto", help="auto, lleaves or lightgbm")
    parser.add_argument("--app", action="store_true", help="also time App.decide per stage")
    parser.add_argument(
        "--app-gaps",
        default="",
        help="also time App.decide with pauses between calls (ms, comma-separated, e.g. 0,2,10)",
    )
    args = parser.parse_args()
    if args.app:
        print(app_stages(args.model, args.log, 4 * args.repeat))
    if args.app_gaps:
        gaps = [float(g) for g in args.app_gaps.split(",")]
        print("\n".join(app_gaps(args.model, args.log, args.repeat, gaps)))

    bundle = ModelBundle.load(args.model, runtime=args.runtime)
    scorer = Scorer(bundle, load_config())
    plain = {t: LightGBMPredictor(args.model / f"{t}.txt") for t in ("engaged", "negative")}
    print(describe())
    print(f"model {bundle.version} ({bundle.runtime}); {len(bundle.core.names)} features")
    print(
        "| mode | p50 ms | p99 ms | features / model / rank p50 ms | engine candidates/s "
        "| LightGBM predict p50 ms | LightGBM candidates/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in (100, 500):
        reqs = score_requests(args.log, n, 64, seed=n)
        batches = [reqs[k : k + 32] for k in range(0, len(reqs), 32)]
        for label, groups in ((f"1 x {n}", [[r] for r in reqs]), (f"32 x {n}", batches)):
            cycle: Iterator[list[ScoreRequest]] = itertools.cycle(groups)
            stages: dict[str, list[float]] = defaultdict(list)
            timer = CallbackTimer(partial(observe, stages))
            reps = args.repeat // len(groups[0]) + 10
            t = timed(partial(score_next, scorer, cycle, timer), reps)
            x = bundle.core.batch(
                [r.context for r in groups[0]],
                [r.candidates for r in groups[0]],
                [r.exposures for r in groups[0]],
            ).matrix()
            floor = timed(partial(predict_all, list(plain.values()), x), args.repeat)
            print(row(label, t, stages, n * len(groups[0]), floor))


if __name__ == "__main__":
    main()
