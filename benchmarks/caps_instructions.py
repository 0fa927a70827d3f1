"""Instructions Redis executes per cap-store call, counted by valgrind's callgrind.

    .venv/bin/python -m benchmarks.caps_instructions      # about 30 s; needs valgrind

Time on these shared VMs moves with their load and their speed of the day (the same reads have
taken 250 to 650 us of Redis time), so a change to the Lua scripts is judged better by the
instructions they cost, which do not move (BENCHMARKS.md). This records the same synthetic
traffic as ``bench_caps`` (the same ``--rows``, ``--days``, breadth flags) into an embedded
Redis, saves it, starts the same binary again under callgrind on that data, and counts per call:
a read (a household's snapshot: the same for 100 or 500 candidates, which the client
evaluates), a read with a check-and-record after it, an empty script (the floor of any call),
and the recording of one impression (in batches of 100).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from engine.caps.connect import client_options
from engine.caps.embedded import EmbeddedRedis
from engine.caps.gate import CapGate
from engine.caps.keys import KeySpace
from engine.caps.redis_store import RedisCapStore
from engine.caps.rules import parse_duration
from engine.caps.store import Impression
from engine.config import load_config
from engine.synth.generator import generate

from .bench_caps import _world, impressions, read_calls, requests, reserving

CALLS = 100  # calls counted per figure


def _gate(server: EmbeddedRedis) -> CapGate:
    config = load_config()
    client = server.client(**client_options(120_000))
    store = RedisCapStore(
        client,
        config.caps.rules,
        config.caps.gap_rules,
        config.caps.block_rules,
        KeySpace("instr"),
        retention_s=parse_duration(config.store.retention),
        deadline_s=120.0,
    )
    return CapGate(store, config.caps, parse_duration(config.store.retention), fail_open=False)


def _counted(pid: int, out: Path, fn: Callable[[int], object], calls: int) -> float:
    """Instructions per call of ``fn`` (called ``calls`` times), from a callgrind dump."""
    fn(0)  # warm: scripts loaded, connection open
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    for i in range(calls):
        fn(i)
    before = set(out.glob("cg.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for _ in range(200):
        new = set(out.glob("cg.*")) - before
        if new:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # the dump is written at once; let it close
    for line in max(new, key=lambda p: p.stat().st_mtime).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / calls
    raise RuntimeError("no totals in the callgrind dump")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the log")
    parser.add_argument("--days", type=int, default=1, help="days of traffic the log spans")
    parser.add_argument("--rows-per-household", type=int, default=2_000)
    parser.add_argument("--campaigns", type=int, default=0, help="campaigns (0: the world's)")
    parser.add_argument("--ads", type=int, default=0, help="ads and creatives (0: the world's)")
    parser.add_argument("--single-user-households", action="store_true")
    parser.add_argument("--calls", type=int, default=CALLS)
    args = parser.parse_args()
    if shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    work = Path(tempfile.mkdtemp(prefix="admatch-instr-"))
    try:
        log = generate(_world(args)).log  # bench_caps' traffic
        events = impressions(log)
        server = EmbeddedRedis(directory=work).start()
        gate = _gate(server)
        for k in range(0, len(events), 500):
            gate.record(events[k : k + 500])
        gate.store.client.save()  # type: ignore[attr-defined]
        gate.store.close()
        server.stop()

        valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.%p")
        server = EmbeddedRedis(directory=work, command_prefix=valgrind).start(timeout_s=300)
        gate = _gate(server)
        store = gate.store
        assert isinstance(store, RedisCapStore)
        pid = int(store.client.info("server")["process_id"])
        end_of_day = max(e.ts for e in events) + timedelta(minutes=1)
        rows = [("empty script (the floor of a call)", "-", lambda i: store.client.eval("", 0))]
        reqs = requests(log, 100, 50)
        rows.append(
            ("read (a household's snapshot)", "100", _reads(store, read_calls(store, reqs)))
        )
        rows.append(("read, then check-and-record", "1", reserving(gate, reqs, "x")))
        batch = [
            dataclasses.replace(e, impression_id=f"again-{k}", ts=end_of_day)
            for k, e in enumerate(events[:100])
        ]
        rows.append(("record, per impression (batches of 100)", "-", _record(gate, batch)))
        print("| call | candidates | instructions per call (thousands) |")
        print("|---|---|---|")
        for label, n_cands, fn in rows:
            calls = 20 if label.startswith("record") else args.calls
            per = _counted(pid, work, fn, calls)
            if label.startswith("record"):
                per /= len(batch)
            print(f"| {label} | {n_cands} | {per / 1e3:,.1f} |", flush=True)
        store.close()
        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reads(store: RedisCapStore, wire: list) -> Callable[[int], object]:
    def read(i: int) -> object:
        return store._eval(store._read, *wire[i % len(wire)])

    return read


def _record(gate: CapGate, batch: list[Impression]) -> Callable[[int], object]:
    def record(i: int) -> object:
        ids = [dataclasses.replace(e, impression_id=f"{e.impression_id}-{i}") for e in batch]
        return gate.record(ids)

    return record


if __name__ == "__main__":
    main()
