"""What a benchmark's figures were measured on: the machine, its load, and how fast it runs
Python right now.

The machines here are shared virtual machines whose speed moves from day to day (the same
benchmark has run twice as slow on one day as on the day before, and slower again the next).
Every benchmark prints :func:`describe` first, so that figures from different runs can be set
side by side: a run is comparable with another only if their speed references are close.
"""

from __future__ import annotations

import os
import platform
import time

REFERENCE_ADDITIONS = 3_000_000


def speed_reference(rounds: int = 3) -> float:
    """Seconds a fixed pure-Python loop (``REFERENCE_ADDITIONS`` integer additions) takes here
    now, best of ``rounds``: lower is faster; the interpreter's speed, not numpy's or Redis's."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        total = 0
        for i in range(REFERENCE_ADDITIONS):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def describe() -> str:
    """One line: architecture, CPUs, load average and the speed reference."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average {load}; speed "
        f"reference {speed_reference() * 1e3:.0f} ms (a Python loop of "
        f"{REFERENCE_ADDITIONS / 1e6:g}M additions, best of 3: lower is faster)"
    )
