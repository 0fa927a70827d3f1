"""Open-loop latency curve of the gRPC service: Score requests of 100 candidates arriving at fixed
rates, whatever the server's answers.

    .venv/bin/python -m benchmarks.bench_open_loop                      # about 2 minutes
    .venv/bin/python -m benchmarks.bench_open_loop --rates 100,400 --duration 4

A closed-loop client (``bench_grpc``) sends its next request when the last one is answered, so a
slow server slows the arrivals and its queueing never shows. An ad server's traffic does not
wait: here request ``k`` is due at ``k / rate`` seconds after the start and is sent then (two
client processes, each one asyncio event loop taking every other request over 8 connections
in turn, pre-serialized bytes: the kernel hands each connection to one worker, so two
connections could land on the same one); its latency counts from when it was due, so a
request that could not even be sent on time (the client behind) counts its delay too: no
coordinated omission.

The server is ``admatch serve`` as ``bench_grpc`` starts it (the shipped config, batching on,
the embedded Redis, empty counts, no decision log), with ``--workers`` processes, warmed up
first (``--warmup`` seconds at 100 requests/s, not measured). Each rate
prints achieved requests/s, latency percentiles, errors (a request gets 10 s), and the CPU per
request of the server and Redis (from ``/proc``) and of the clients. The curve (p50 and p99
against the offered rate, the 20 ms p99 target) is written as a PNG to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .bench_grpc import (
    CANDIDATES,
    SCORE,
    TARGET_P99_MS,
    bench_config,
    error_summary,
    make_requests,
    pctl,
    run_clients,
    start_server,
    stop_server,
)
from .machine import describe

RATES = (100, 200, 400, 600)
CLIENTS = 2
# connections per client, taking requests in turn: the kernel gives each connection to one
# worker (SO_REUSEPORT), so a few connections could all land on one worker
CONNECTIONS = 8


async def _arrivals(
    target: str, payloads: list[bytes], rate: float, duration: float, part: int, go: Any
) -> tuple[list[float], dict[str, int], float, int]:
    """Send requests ``part``, ``part + CLIENTS``, ... of the schedule at their due times."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(CONNECTIONS)]
    calls = [ch.unary_unary(SCORE) for ch in channels]  # bytes in, bytes out
    for call in calls:  # connect and warm up
        await call(payloads[0], timeout=30)
    lat: list[float] = []
    errors: dict[str, int] = {}
    late = 0

    async def one(k: int, due: float) -> None:
        try:
            await calls[k // CLIENTS % CONNECTIONS](payloads[k % len(payloads)], timeout=10)
            lat.append(time.perf_counter() - due)
        except grpc.RpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    start, cpu0 = time.perf_counter(), time.process_time()
    tasks = []
    for k in range(part, int(rate * duration), CLIENTS):
        due = start + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.001:
            late += 1  # the client itself fell behind: the latency still counts from ``due``
        tasks.append(asyncio.create_task(one(k, due)))
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    for ch in channels:
        await ch.close()
    return lat, errors, cpu, late


def _client(target: str, payloads: list[bytes], rate: float, duration: float, part: int,
            ready: Any, go: Any, results: Any) -> None:  # fmt: skip
    ready.put(os.getpid())
    results.put(asyncio.run(_arrivals(target, payloads, rate, duration, part, go)))


def point(
    target: str, payloads: list[bytes], rate: float, duration: float, session: int
) -> dict[str, Any]:
    """One offered rate for ``duration`` seconds."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_client, args=(target, payloads, rate, duration, k, ready, go, results))
        for k in range(CLIENTS)
    ]
    # the clients connect and warm up after saying they are ready: a second more
    got, used, wall = run_clients(procs, (ready, go, results), duration, session, settle_s=1.0)
    lat = np.array([x for g in got for x in g[0]])
    n = max(len(lat), 1)
    return {
        "rate": rate,
        "achieved": len(lat) / wall,
        "n": len(lat),
        "p50": pctl(lat, 50),
        "p90": pctl(lat, 90),
        "p99": pctl(lat, 99),
        "max": float(lat.max() * 1e3) if len(lat) else float("nan"),
        "errors": error_summary(got),
        "late_sends": sum(g[3] for g in got),
        "server_ms": used["server"] / n * 1e3,
        "redis_ms": used["redis"] / n * 1e3,
        "client_ms": sum(g[2] for g in got) / n * 1e3,
    }


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """p50 and p99 against the offered rate, with the p99 target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rates = [r["rate"] for r in rows]
    for key, style in (("p50", "o-"), ("p99", "s-")):
        ax.plot(rates, [r[key] for r in rows], style, label=key)
    ax.axhline(
        TARGET_P99_MS, color="grey", linestyle="--", label=f"p99 target {TARGET_P99_MS:g} ms"
    )
    ax.set_yscale("log")
    ax.set_xlabel("offered requests/s (open loop)")
    ax.set_ylabel("latency from arrival, ms")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/bench/model_1m"))
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m_c.parquet"))
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at 100/s, unmeasured")
    parser.add_argument("--out", type=Path, default=Path("data/bench/open_loop"))
    parser.add_argument(
        "--compute-threads", type=int, help="server.compute_threads (default: the shipped 1)"
    )
    parser.add_argument(
        "--batch-max", type=int, default=32, help="server.batch_max (shipped: 32; 1: no batching)"
    )
    parser.add_argument(
        "--batch-window-ms", type=float, help="server.batch_window_ms (default: the shipped 4)"
    )
    args = parser.parse_args()
    if not args.model.exists():  # fall back to the quickstart's model and log
        args.model, args.log = Path("data/quickstart/model"), Path("data/quickstart/log.parquet")
    payloads = make_requests(args.log, 64)
    print(describe())
    print(
        f"model {args.model}; {CANDIDATES} candidates per request, {len(payloads)} distinct "
        f"requests; {args.workers} worker(s), compute threads "
        f"{args.compute_threads or 'as shipped'}, batching on (at most {args.batch_max} a pass, "
        f"window {'as shipped' if args.batch_window_ms is None else f'{args.batch_window_ms:g} ms'}"
        "), embedded Redis, empty counts; "
        f"{CLIENTS} client processes; {args.duration:g} s per rate"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(
            Path(tmp), args.batch_window_ms, args.batch_max, compute_threads=args.compute_threads
        )
        proc, target = start_server(args.model, config, args.workers)
        try:
            point(target, payloads, 100.0, args.warmup, proc.pid)  # every worker warm
            for rate in (float(r) for r in args.rates.split(",")):
                rows.append(point(target, payloads, rate, args.duration, proc.pid))
                r = rows[-1]
                print(f"  {rate:g}/s: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms")
        finally:
            stop_server(proc)
    print()
    print(
        "| offered req/s | achieved | p50 ms | p90 ms | p99 ms | max ms | errors | late sends "
        "| server ms/req | Redis ms/req | clients ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rate']:g} | {r['achieved']:,.0f} | {r['p50']:.1f} | {r['p90']:.1f} | "
            f"{r['p99']:.1f} | {r['max']:.0f} | {r['errors']} | {r['late_sends']} | "
            f"{r['server_ms']:.2f} | {r['redis_ms']:.2f} | {r['client_ms']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "open_loop.json").write_text(json.dumps(rows, indent=1))
    png = args.out / "open_loop.png"
    plot(rows, png, f"admatch Score, {CANDIDATES} candidates, {args.workers} workers, open loop")
    print(f"\ncurve: {png}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
