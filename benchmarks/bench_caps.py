"""Cap store speed and memory, on the embedded Redis (unix socket) or a Redis URL.

    .venv/bin/python -m benchmarks.bench_caps                       # embedded Redis
    .venv/bin/python -m benchmarks.bench_caps --url redis://127.0.0.1:6379/0

Records one day of synthetic traffic (every impression of a generated one-day log, in batches of
500), then prints: events recorded per second; Redis memory per active user; and for requests of
100 and 500 candidates (each candidate its own campaign: the worst case for key count) the
latency of one read (exposure counts + cap decision) and of one atomic check-and-record, with
the number of round trips per call taken from Redis' own command statistics.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import numpy as np
import polars as pl

from engine.caps.connect import open_store
from engine.caps.gate import CapGate
from engine.caps.plan import plan_request
from engine.caps.redis_store import RedisCapStore
from engine.caps.rules import parse_duration
from engine.caps.store import Impression
from engine.config import load_config
from engine.synth.generator import generate
from engine.synth.params import WorldParams
from features.online import RequestContext
from features.schema import CANDIDATE_COLUMNS


def impressions(log: pl.DataFrame) -> list[Impression]:
    shown = log.filter("shown")
    return [Impression.from_row(f"i{k}", r) for k, r in enumerate(shown.iter_rows(named=True))]


def requests(log: pl.DataFrame, n: int, count: int) -> list[tuple[RequestContext, dict]]:
    rng = np.random.default_rng(n)
    heads = log.unique("request_id", keep="first").sample(count, seed=n)
    out = []
    for row in heads.iter_rows(named=True):
        rows = log[rng.integers(0, len(log), n)]
        cands = {c: rows[c].to_list() for c in CANDIDATE_COLUMNS}
        cands["ad_id"] = [f"{a}#{i}" for i, a in enumerate(cands["ad_id"])]
        cands["campaign_id"] = [f"{c}#{i}" for i, c in enumerate(cands["campaign_id"])]
        out.append((RequestContext.from_row(row), cands))
    return out


def timed(fn: Callable[[int], object], repeat: int) -> np.ndarray:
    out = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="store URL; empty: embedded Redis")
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the one-day log")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()

    base = load_config()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    store_cfg = base.store.model_copy(
        update={"url": args.url, "prefix": prefix, "deadline_ms": 2000}
    )
    config = base.model_copy(update={"store": store_cfg})
    store = open_store(config)
    assert isinstance(store, RedisCapStore)
    gate = CapGate(store, config.caps, parse_duration(config.store.retention), fail_open=False)
    log = generate(WorldParams(rows=args.rows, seed=4, days=1)).log
    events = impressions(log)
    users = log.filter("shown")["user_id"].n_unique()
    before = int(store.client.info("memory")["used_memory"])
    start = time.perf_counter()
    for k in range(0, len(events), 500):
        gate.record(events[k : k + 500])
    seconds = time.perf_counter() - start
    after = int(store.client.info("memory")["used_memory"])
    print(f"store: {'embedded (unix socket)' if not args.url else args.url}")
    print(
        f"recorded {len(events):,} impressions of {users:,} active users in {seconds:.1f} s: "
        f"{len(events) / seconds:,.0f} events/s (batches of 500, one round trip each)"
    )
    print(
        f"memory: {(after - before) / users / 1024:.1f} KiB per active user "
        f"({(after - before) / len(events):.0f} bytes per impression, all families)"
    )
    print("| call | candidates | p50 ms | p99 ms | round trips per call |")
    print("|---|---|---|---|---|")
    for n in (100, 500):
        reqs = requests(log, n, 50)
        plans = [
            plan_request(
                c,
                cands,
                config.caps.rules,
                config.caps.min_gaps,
                config.caps.feedback,
                gate.retention_s,
            )
            for c, cands in reqs
        ]
        wire = [store._read_keys_args(p) for p in plans]
        for label, fn in (
            (
                "read: round trip only (EVALSHA)",
                lambda i, w=wire: store._read(keys=w[i % len(w)][0], args=w[i % len(w)][1]),
            ),
            ("read: plan + round trip + decode", lambda i, r=reqs: gate.read(*r[i % len(r)])),
            (
                "check-and-record",
                lambda i, r=reqs, n=n: gate.reserve(
                    r[i % len(r)][0],
                    {c: v[:1] for c, v in r[i % len(r)][1].items()},
                    Impression(
                        f"x{n}-{i}",
                        r[i % len(r)][0].ts,
                        r[i % len(r)][0].user_id,
                        r[i % len(r)][0].touchpoint,
                        r[i % len(r)][0].slot,
                        "ad-x",
                    ),
                ),
            ),
        ):
            calls_before = _script_calls(store)
            t = timed(fn, args.repeat) * 1e3
            trips = (_script_calls(store) - calls_before) / args.repeat
            if label == "check-and-record" and n == 500:
                continue  # one candidate either way
            shown_n = n if label.startswith("read") else 1
            print(
                f"| {label} | {shown_n} | {np.percentile(t, 50):.3f} | "
                f"{np.percentile(t, 99):.3f} | {trips:.2f} |"
            )
    for key in store.client.scan_iter(match=f"{prefix}:*", count=10_000):
        store.client.delete(key)
    store.close()


def _script_calls(store: RedisCapStore) -> int:
    stats = store.client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


if __name__ == "__main__":
    main()
