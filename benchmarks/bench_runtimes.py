"""Model-runtime speed alone: LightGBM's predict versus the lleaves-compiled trees.

    taskset -c 0 .venv/bin/python -m benchmarks.bench_runtimes --model data/bench/model_1m

Times one predict call of each target's model on 1, 100, 500 and 10,000 rows of real feature
rows from the log (single thread), and checks the two agree within 1e-6.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from engine.model.runtime import LightGBMPredictor, LleavesPredictor

from .bench_features import timings as timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m_c.parquet"))
    args = parser.parse_args()
    from engine.model.bundle import ModelBundle
    from features.logio import read_log

    bundle = ModelBundle.load(args.model, runtime="lightgbm")
    x_all = bundle.core.offline_matrix(
        bundle.core.offline(read_log(args.log).head(200_000)).collect()
    )
    print("| target | rows | LightGBM ms | lleaves ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for target in ("engaged", "negative"):
        model_file = args.model / f"{target}.txt"
        lgbm = LightGBMPredictor(model_file)
        comp = LleavesPredictor(model_file, args.model / "compiled" / f"{target}.so")
        for n in (1, 100, 500, 10_000):
            x = np.ascontiguousarray(x_all[:n])
            reps = 100 if n < 10_000 else 10
            a = np.median(timed(partial(lgbm.predict, x), reps))
            b = np.median(timed(partial(comp.predict, x), reps))
            diff = np.abs(lgbm.predict(x) - comp.predict(x)).max()
            print(
                f"| {target} | {n:,} | {a * 1e3:.3f} | {b * 1e3:.3f} | {a / b:.1f}x | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
