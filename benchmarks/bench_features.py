"""Feature-core throughput: offline rows/s, online latency, batched candidate-rows/s.

Run (one core, as BENCHMARKS.md records it):

    POLARS_MAX_THREADS=1 taskset -c 0 .venv/bin/python -m benchmarks.bench_features

and with both cores for the offline figure: ``.venv/bin/python -m benchmarks.bench_features``.
Setup (generating the log, fitting statistics) is outside every timed region.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from engine.synth.generator import generate, write_generated
from engine.synth.params import WorldParams
from features import EngagementStats, FeatureCore, FeatureParams, Priors, RequestContext
from features.exposure import EXPOSURE_SCHEMA
from features.logio import read_log
from features.schema import CANDIDATE_COLUMNS
from features.taxonomy import load_taxonomy

from .machine import describe


def timings(fn: Callable[[], object], repeat: int) -> np.ndarray:
    """Seconds per call, after two warm-up calls."""
    fn()
    fn()
    out = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def requests(log: pl.DataFrame, n_candidates: int, count: int, seed: int) -> list[tuple]:
    """``count`` requests of the log, each given ``n_candidates`` candidates drawn from its rows."""
    rng = np.random.default_rng(seed)
    heads = log.unique("request_id", keep="first", maintain_order=True).sample(
        count, seed=seed, with_replacement=True
    )
    out = []
    for row in heads.iter_rows(named=True):
        rows = log[rng.integers(0, len(log), n_candidates)]
        cands = {c: rows[c].to_list() for c in CANDIDATE_COLUMNS}
        # The synthetic world has ~60 ads; a request of hundreds repeats them, so each candidate
        # gets its own ad id (its campaign and advertiser statistics still apply).
        cands["ad_id"] = [f"{ad}#{i}" for i, ad in enumerate(cands["ad_id"])]
        exposure = rng.integers(0, 4, (n_candidates, len(EXPOSURE_SCHEMA))).astype(np.float64)
        out.append((RequestContext.from_row(row), cands, exposure))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the offline log")
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m.parquet"))
    parser.add_argument("--repeat", type=int, default=300, help="calls per online figure")
    parser.add_argument(
        "--taxonomy",
        type=Path,
        help="a category taxonomy TSV for the priors (interests then match through it)",
    )
    args = parser.parse_args()

    if not args.log.exists():
        print(f"generating {args.rows:,} rows -> {args.log}")
        start = time.perf_counter()
        write_generated(generate(WorldParams(rows=args.rows, seed=1)), args.log)
        print(f"  gen-logs: {time.perf_counter() - start:.1f} s")
    log = read_log(args.log)
    stats = EngagementStats.fit(log)
    priors = Priors.default()
    if args.taxonomy:
        priors = replace(priors, taxonomy=load_taxonomy(args.taxonomy))
    core = FeatureCore(FeatureParams(stats, priors))
    print(describe())
    print(
        f"polars {pl.__version__} with {pl.thread_pool_size()} thread(s), "
        f"{len(core.names)} features, taxonomy: {args.taxonomy or 'none'}"
    )

    offline = timings(lambda: core.offline(log).collect(), repeat=3)
    best = offline.min()
    print(f"offline   {len(log):,} rows: {best:.2f} s (best of 3) = {len(log) / best:,.0f} rows/s")

    for n in (100, 500):
        cycle = itertools.cycle(requests(log, n, 64, seed=n))

        def one(cycle: Iterator[tuple] = cycle) -> None:
            r, c, e = next(cycle)
            core.online(r, c, e).matrix()

        t = timings(one, args.repeat) * 1e3
        print(
            f"online    1 x {n} candidates: p50 {np.percentile(t, 50):.3f} ms, "
            f"p99 {np.percentile(t, 99):.3f} ms (features + matrix)"
        )

    reqs = requests(log, 100, 32 * 8, seed=7)
    batches = itertools.cycle([reqs[k : k + 32] for k in range(0, len(reqs), 32)])

    def batch() -> None:
        b = next(batches)
        core.batch([r for r, _, _ in b], [c for _, c, _ in b], [e for _, _, e in b]).matrix()

    t = timings(batch, max(args.repeat // 4, 20))
    p50 = float(np.percentile(t, 50))
    print(
        f"batch     32 x 100 candidates: p50 {p50 * 1e3:.2f} ms, p99 "
        f"{np.percentile(t, 99) * 1e3:.2f} ms = {3200 / p50:,.0f} candidate-rows/s"
    )


if __name__ == "__main__":
    main()
