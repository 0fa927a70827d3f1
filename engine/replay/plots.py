"""The replay's PNG plots: latency per stage, throughput over time, revenue vs user cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latency_histogram(stages: dict[str, np.ndarray], total: np.ndarray, path: Path) -> Path:
    """Histogram of request latency and of each stage's time, log-spaced, in ms."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = {"total": total, **stages}
    finite = [v[np.isfinite(v) & (v > 0)] * 1000 for v in series.values()]
    values = np.concatenate([np.zeros(0), *finite])
    if len(values):
        bins = list(np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-9, 60))
        for (name, _), v in zip(series.items(), finite, strict=True):
            if len(v):
                ax.hist(v, bins=bins, histtype="step", label=name, linewidth=1.4)
        ax.set_xscale("log")
    ax.set_xlabel("ms per request")
    ax.set_ylabel("requests")
    ax.set_title("Latency per stage")
    ax.legend()
    return _save(fig, path)


def throughput_over_time(timeline: list[tuple[float, int]], path: Path) -> Path:
    """Requests per second between progress points, against elapsed seconds."""
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(timeline) > 1:
        t = np.array([p[0] for p in timeline])
        n = np.array([p[1] for p in timeline], dtype=np.float64)
        rate = np.diff(n) / np.maximum(np.diff(t), 1e-9)
        ax.plot(t[1:], rate, marker=".")
    elif timeline:
        t0, n0 = timeline[0]
        ax.plot([t0], [n0 / t0 if t0 else 0.0], marker="o")
    ax.set_xlabel("elapsed s")
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput over time (wall clock, harness included)")
    ax.set_ylim(bottom=0)
    return _save(fig, path)


def revenue_vs_cost(headline: dict[str, Any], path: Path) -> Path:
    """Revenue per request against negative feedback per request, engine (doubly robust)
    and the log's policy (on-policy), with 95% intervals."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if headline:
        for who, marker in (("engine", "o"), ("logging", "s")):
            rev, neg = headline["revenue"][who], headline["negative"][who]
            ax.errorbar(
                neg["value"],
                rev["value"],
                xerr=[[neg["value"] - neg["low"]], [neg["high"] - neg["value"]]],
                yerr=[[rev["value"] - rev["low"]], [rev["high"] - rev["value"]]],
                fmt=marker,
                capsize=4,
                label=f"{who} policy",
            )
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no off-policy estimates for this log", ha="center", va="center")
    ax.set_xlabel("negative feedback per request (user cost)")
    ax.set_ylabel("revenue per request")
    ax.set_title("Revenue vs user cost")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
