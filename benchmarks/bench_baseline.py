"""admatch's request path against the straightforward design a team would write first, in one
run on the same requests, the same model and the same cap store.

    .venv/bin/python -m benchmarks.bench_baseline --model data/bench/model_1m \
        --log data/bench/log_1m.parquet

The straightforward design ("baseline") decides one request at a time: it reads the cap store
once per candidate (a round trip each: exposures and whether a cap refuses it), computes the
request's features with polars and predicts with LightGBM's own ``Booster.predict``, then
applies the same rules and ranking (so both decide the same, which the run checks). admatch
("engine") decides requests in passes of up to 32 (the server's batcher; a replay cuts a pass
where a user repeats, ``causal_batches``): one cap-store round trip for the pass, one polars
pass, the trees compiled with lleaves when the model directory has them (``App.decide_pass``,
what the server runs). Both run in this process, one thread, against the embedded Redis the
shipped config starts (empty counts: both read, neither records), after a warm-up.

Two request mixes: the log's own requests in log order (the synthetic log's are small: a
handful of candidates), and requests of 100 candidates. Printed per mix: requests/s and
candidates/s of each, the ratio, and the stock LightGBM floor (``Booster.predict`` alone on
the same feature rows, candidates/s) with each design's share of it.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np

from engine.app import Admitted, App, build_app
from engine.caps.gate import GateReading, with_reading
from engine.config import load_config
from engine.model.bundle import ModelBundle
from engine.replay.causal import causal_batches
from engine.replay.requests import to_requests
from engine.replay.source import RequestChunk
from engine.scoring import rules as R
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import NULL_TIMER
from features.logio import read_log

from .bench_features import requests as candidate_requests
from .machine import describe

PASS = 32


class Baseline:
    """One request at a time: caps read per candidate, polars features, stock LightGBM."""

    def __init__(self, app: App, model_dir: Path) -> None:
        self.gate = app.gate
        self.scorer = Scorer(ModelBundle.load(model_dir, runtime="lightgbm"), app.scorer.config)

    def decide(self, request: ScoreRequest) -> Decision:
        ctx, cands = request.context, request.candidates
        n = len(cands["ad_id"])
        readings = [  # a round trip per candidate
            self.gate.read(ctx, {k: v[i : i + 1] for k, v in cands.items()}) for i in range(n)
        ]
        reading = GateReading(
            np.vstack([r.exposures for r in readings]),
            np.concatenate([r.capped for r in readings]),
            all(r.store_ok for r in readings),
            separated=_stacked([r.separated for r in readings]),
            blocked=_stacked([r.blocked for r in readings]),
        )
        return self.scorer.score(with_reading(request, reading))


def _stacked(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """One candidate's optional flags each, as one array (``None`` when none has any)."""
    if all(p is None for p in parts):
        return None
    return np.concatenate([np.zeros(1, dtype=bool) if p is None else p for p in parts])


def engine_decide(app: App, requests: list[ScoreRequest]) -> list[Decision]:
    """admatch's path: passes over causal batches, as the replay drives the server's code."""
    out: list[Decision] = []
    for span in causal_batches(requests, PASS):
        works = [
            app.work(partial(Admitted, r, log=False), _itself)
            for r in requests[span.start : span.stop]
        ]
        for outcome in app.decide_pass(works, NULL_TIMER):
            assert isinstance(outcome, Decision), outcome
            out.append(outcome)
    return out


def _itself(decision: Decision) -> Decision:
    return decision


def floor(bundle: ModelBundle, requests: list[ScoreRequest]) -> float:
    """Stock LightGBM's predict alone on the requests' feature rows: candidates/s."""
    stock = ModelBundle.load(bundle.directory, runtime="lightgbm")
    batch = stock.core.batch(
        [r.context for r in requests], [r.candidates for r in requests], None, also=R.INPUTS
    )
    x = batch.matrix()
    start = time.perf_counter()
    for _ in range(3):
        stock.engaged.predict(x)
    return 3 * len(x) / (time.perf_counter() - start)


def timed(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """Best of ``rounds`` calls, seconds."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def mix(name: str, app: App, baseline: Baseline, requests: list[ScoreRequest]) -> None:
    n = sum(len(r.candidates["ad_id"]) for r in requests)
    ours = engine_decide(app, requests)
    theirs = [baseline.decide(r) for r in requests]  # warm both, and compare
    same = sum(a.selected == b.selected for a, b in zip(ours, theirs, strict=True))
    t_ours = timed(lambda: engine_decide(app, requests), 3)
    t_base = timed(lambda: [baseline.decide(r) for r in requests], 3)
    stock = floor(app.scorer.model, requests)
    print(
        f"| {name} | {len(requests):,} | {n / len(requests):.1f} | "
        f"{len(requests) / t_base:,.0f} | {len(requests) / t_ours:,.0f} | "
        f"{t_base / t_ours:.1f}x | {n / t_base / stock:.3f} | {n / t_ours / stock:.3f} | "
        f"{same}/{len(requests)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/bench/model_1m"))
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m.parquet"))
    parser.add_argument("--requests", type=int, default=2000, help="of the log, in order")
    parser.add_argument("--large", type=int, default=200, help="requests of 100 candidates")
    args = parser.parse_args()
    config = load_config()
    store = config.store.model_copy(update={"state_dir": ""})  # empty counts
    app = build_app(config.model_copy(update={"store": store}), args.model)
    try:
        baseline = Baseline(app, args.model)
        log = read_log(args.log)
        chunk = RequestChunk.of(log.head(args.requests * 8))
        small = to_requests(chunk.head(min(args.requests, chunk.requests - 1)))
        large = [
            ScoreRequest(ctx, cands)
            for ctx, cands, _ in candidate_requests(log, 100, args.large, seed=100)
        ]
        print(describe())
        print(
            f"model {args.model} (engine: {app.scorer.model.runtime}; baseline: lightgbm); "
            f"embedded Redis, empty counts; one thread; best of 3; passes of up to {PASS}"
        )
        print()
        print(
            "| requests | count | candidates / request | baseline req/s | engine req/s | "
            "engine / baseline | baseline floor ratio | engine floor ratio | same selection |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        mix("the log's, in order", app, baseline, small)
        mix("100 candidates", app, baseline, large)
    finally:
        app.close()


if __name__ == "__main__":
    main()
