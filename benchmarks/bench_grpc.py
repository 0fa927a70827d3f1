"""gRPC service throughput and latency: Score requests of 100 candidates through a real server.

    .venv/bin/python -m benchmarks.bench_grpc                 # about 3 minutes
    .venv/bin/python -m benchmarks.bench_grpc --quick         # a smoke run

Starts ``admatch serve`` as a subprocess (1 worker, then 2 workers sharing the port), on a free
port, with the embedded Redis, no metrics endpoint and no reload watcher, and waits for the gRPC
health check to report SERVING. For 1, 8, 32 and 64 requests in flight it runs closed-loop load
from several client processes (spawned; each with its own channels and threads, sending
pre-serialized requests so that the client does as little work as possible) and prints
requests/s, p50/p99 latency, errors and the CPU seconds the clients used. Requests are plain
Score calls (``reserve_caps`` false): they read the cap store but record nothing, so the same
requests can be sent again and again. It also prints the gRPC overhead: the p50 of a unary
Score through gRPC at concurrency 1 against the p50 of ``App.decide`` in process.

Every point runs with batching across requests off and on (``--batch-window-ms``, 32 per pass).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.rpc.run import free_port

SCORE = "/admatch.v1.AdMatching/Score"
CONCURRENCY = (1, 8, 32, 64)
WORKERS = (1, 2)
CANDIDATES = 100
TARGET_RPS, TARGET_P99_MS, TARGET_OVERHEAD_MS = 1000.0, 20.0, 0.5


def bench_config(directory: Path, batch_window_ms: float) -> Path:
    """The shipped config with no metrics endpoint, no reload watcher, the given batching."""
    text = resources.files("engine").joinpath("default_config.toml").read_text()
    text, n1 = re.subn(r"(?m)^metrics_port = \d+", "metrics_port = 0", text)
    text, n2 = re.subn(r"(?m)^reload_interval_s = [\d.]+", "reload_interval_s = 0", text)
    text, n3 = re.subn(
        r"(?m)^batch_window_ms = [\d.]+", f"batch_window_ms = {batch_window_ms}", text
    )
    assert n1 == n2 == n3 == 1, "default_config.toml changed: update bench_config"
    path = directory / f"bench_grpc_{batch_window_ms:g}.toml"
    path.write_text(text)
    return path


def make_requests(log_path: Path, count: int) -> list[bytes]:
    """``count`` serialized Score requests of ``CANDIDATES`` candidates from the log."""
    from engine.rpc.convert import request_to_proto
    from engine.scoring.types import ScoreRequest
    from features.logio import read_log

    from .bench_features import requests as feature_requests

    log = read_log(log_path)
    out = []
    for ctx, cands, _ in feature_requests(log, CANDIDATES, count, seed=CANDIDATES):
        out.append(request_to_proto(ScoreRequest(ctx, cands)).SerializeToString())
    return out


def pctl(t: np.ndarray, q: float) -> float:
    return float(np.percentile(t, q)) * 1e3 if len(t) else float("nan")


# --- the server -------------------------------------------------------------------------------


def start_server(model: Path, config: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port("127.0.0.1")
    admatch = Path(sys.executable).with_name("admatch")
    cmd = [str(admatch), "serve", "--model", str(model), "--config", str(config)]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                stop_server(proc)
                raise RuntimeError("server not SERVING after 120 s")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    if workers > 1:
        # SERVING comes from whichever worker bound first; give the others time to load too.
        time.sleep(4.0)
    return proc, target


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- the load ---------------------------------------------------------------------------------


def client(
    target: str,
    payloads: list[bytes],
    threads: int,
    channels: int,
    duration: float,
    ready: Any,
    go: EventType,
    results: Any,
) -> None:
    """One client process: ``threads`` closed-loop callers over ``channels`` connections."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    chans = [grpc.insecure_channel(target, options=options) for _ in range(channels)]
    calls = [ch.unary_unary(SCORE) for ch in chans]  # bytes in, bytes out: no (de)serializing
    for call in calls:
        call(payloads[0], timeout=30)  # connect and warm up
    ready.put(os.getpid())
    go.wait()
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors: list[dict[str, int]] = [{} for _ in range(threads)]
    start = time.perf_counter()
    end = start + duration

    def run(k: int) -> None:
        call, out, i = calls[k % len(calls)], lat[k], k * 7
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                call(payloads[i % len(payloads)], timeout=10)
                out.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                name = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
                errors[k][name] = errors[k].get(name, 0) + 1
            i += 1

    cpu0 = time.process_time()
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    for ch in chans:
        ch.close()
    flat = np.array([x for xs in lat for x in xs])
    merged: dict[str, int] = {}
    for e in errors:
        for name, n in e.items():
            merged[name] = merged.get(name, 0) + n
    results.put((flat, merged, cpu, elapsed))


def load(target: str, payloads: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    """Closed-loop load with ``concurrency`` requests in flight, spread over client processes."""
    procs_n = min(concurrency, 4)
    per = [concurrency // procs_n + (1 if i < concurrency % procs_n else 0) for i in range(procs_n)]
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=client,
            args=(target, payloads, t, min(t, 4), duration, ready, go, results),
        )
        for t in per
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    got = [results.get(timeout=duration + 120) for _ in procs]
    for p in procs:
        p.join(30)
    lat = np.concatenate([g[0] for g in got])
    elapsed = max(g[3] for g in got)
    errors: dict[str, int] = {}
    for g in got:
        for name, n in g[1].items():
            errors[name] = errors.get(name, 0) + n
    return {
        "rps": len(lat) / elapsed,
        "p50": pctl(lat, 50),
        "p99": pctl(lat, 99),
        "n": len(lat),
        "errors": " ".join(f"{n} {name}" for name, n in sorted(errors.items())) or "0",
        "cpu": sum(g[2] for g in got),
        "procs": procs_n,
        "elapsed": elapsed,
    }


# --- in process vs unary gRPC -----------------------------------------------------------------


def timed_loop(fn: Any, payloads: list[Any], repeat: int) -> np.ndarray:
    out = np.empty(repeat)
    for i in range(repeat):
        p = payloads[i % len(payloads)]
        t0 = time.perf_counter()
        fn(p)
        out[i] = time.perf_counter() - t0
    return out


def in_process(model: Path, config: Path, payloads: list[bytes], repeat: int) -> dict[str, float]:
    """p50/p99 of ``App.decide`` and of proto->decide->proto, in this process."""
    from admatch.v1 import admatch_pb2 as pb
    from engine.app import build_app
    from engine.config import load_config
    from engine.rpc.convert import decision_to_proto, request_from_proto

    app = build_app(load_config(config), model)  # embedded Redis, as the server
    try:
        msgs = [pb.ScoreRequest.FromString(b) for b in payloads]
        cores = [request_from_proto(m) for m in msgs]
        timed_loop(app.decide, cores, 50)
        decide = timed_loop(app.decide, cores, repeat)

        def full(m: Any) -> None:
            decision_to_proto(app.decide(request_from_proto(m))).SerializeToString()

        whole = timed_loop(full, msgs, repeat)
    finally:
        app.close()
    return {
        "decide_p50": pctl(decide, 50),
        "decide_p99": pctl(decide, 99),
        "full_p50": pctl(whole, 50),
        "full_p99": pctl(whole, 99),
    }


def unary(target: str, payloads: list[bytes], repeat: int) -> dict[str, float]:
    """p50/p99 of one Score at a time through gRPC, from this process."""
    from admatch.v1 import admatch_pb2 as pb

    msgs = [pb.ScoreRequest.FromString(b) for b in payloads]
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            SCORE,
            request_serializer=pb.ScoreRequest.SerializeToString,
            response_deserializer=pb.ScoreResponse.FromString,
        )
        timed_loop(call, msgs, 50)
        t = timed_loop(call, msgs, repeat)
    return {"p50": pctl(t, 50), "p99": pctl(t, 99)}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/bench/model_1m"))
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m_c.parquet"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--repeat", type=int, default=1000, help="calls per p50 of the overhead")
    parser.add_argument(
        "--batch-window-ms", type=float, default=1.0, help="the batching-on window (max 32)"
    )
    parser.add_argument("--quick", action="store_true", help="1 s points, 200 calls: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat = 1.0, 200
    if not args.model.exists():  # fall back to the quickstart's model and log
        args.model, args.log = Path("data/quickstart/model"), Path("data/quickstart/log.parquet")
    started = time.perf_counter()

    payloads = make_requests(args.log, 64)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus; model {args.model}; "
        f"{CANDIDATES} candidates per request, {len(payloads)} distinct requests "
        f"({np.mean([len(p) for p in payloads]) / 1024:.1f} KiB each); Score without "
        f"reserve_caps; embedded Redis; {args.duration:g} s per point"
    )
    print(f"batching: off, and on with a {args.batch_window_ms:g} ms window, 32 per pass")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp), 0.0)
        local = in_process(args.model, config, payloads, args.repeat)
        rows: list[tuple[str, int, int, dict[str, Any]]] = []
        grpc1: dict[str, float] = {}
        for batching, window in (("off", 0.0), ("on", args.batch_window_ms)):
            config = bench_config(Path(tmp), window)
            for workers in WORKERS:
                proc, target = start_server(args.model, config, workers)
                try:
                    if workers == 1 and batching == "off":
                        grpc1 = unary(target, payloads, args.repeat)
                    for c in CONCURRENCY:
                        point = load(target, payloads, c, args.duration)
                        rows.append((batching, workers, c, point))
                finally:
                    stop_server(proc)

    print(
        "| batching | workers | in flight | client procs | req/s | p50 ms | p99 ms | requests "
        "| errors | client CPU s | client CPU per req ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batching, workers, c, r in rows:
        print(
            f"| {batching} | {workers} | {c} | {r['procs']} | {r['rps']:,.0f} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['n']:,} | {r['errors']} | {r['cpu']:.2f} "
            f"| {r['cpu'] / max(r['n'], 1) * 1e3:.3f} |"
        )
    print()
    overhead = grpc1["p50"] - local["decide_p50"]
    print(
        f"in process, App.decide: p50 {local['decide_p50']:.2f} ms, p99 "
        f"{local['decide_p99']:.2f} ms; with proto conversion both ways: p50 "
        f"{local['full_p50']:.2f} ms, p99 {local['full_p99']:.2f} ms"
    )
    print(
        f"through gRPC, unary, 1 in flight, 1 worker: p50 {grpc1['p50']:.2f} ms, "
        f"p99 {grpc1['p99']:.2f} ms"
    )
    print(
        f"gRPC overhead over App.decide (p50): {overhead:.2f} ms; over decide with proto "
        f"conversion: {grpc1['p50'] - local['full_p50']:.2f} ms"
    )
    print()
    ok = [r for *_, r in rows if r["rps"] >= TARGET_RPS and r["p99"] < TARGET_P99_MS]
    best = max(rows, key=lambda x: x[3]["rps"])
    print(
        f"target >= {TARGET_RPS:,.0f} req/s of {CANDIDATES} candidates with p99 < "
        f"{TARGET_P99_MS:g} ms: {verdict(bool(ok))} (best: {best[3]['rps']:,.0f} req/s, p99 "
        f"{best[3]['p99']:.2f} ms, batching {best[0]}, {best[1]} worker(s), {best[2]} in flight)"
    )
    print(
        f"target gRPC adds < {TARGET_OVERHEAD_MS} ms p50 over in process: "
        f"{verdict(overhead < TARGET_OVERHEAD_MS)} ({overhead:.2f} ms)"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
