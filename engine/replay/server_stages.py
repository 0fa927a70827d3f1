"""Per-stage latency of a remote server, from its Prometheus ``admatch_stage_seconds``.

A client sees only whole calls; the server's stage histogram, scraped before and after a
replay, gives each stage's mean and approximate percentiles over the replay's requests
(interpolated inside histogram buckets, so as exact as the bucket edges; no maximum).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from engine.errors import InvalidArgument

METRIC = "admatch_stage_seconds"


@dataclass
class StageHistogram:
    """Cumulative bucket counts (by upper edge), count and sum of one stage."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    total: float = 0.0


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, StageHistogram]:
    """The stage histograms a ``/metrics`` endpoint reports now.

    Raises:
        InvalidArgument: the URL does not answer with Prometheus text.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        raise InvalidArgument("--metrics-url", f"cannot read {url}: {exc}") from exc
    out: dict[str, StageHistogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for s in family.samples:
            h = out.setdefault(s.labels.get("stage", ""), StageHistogram())
            if s.name.endswith("_bucket"):
                h.buckets[float(s.labels["le"])] = s.value
            elif s.name.endswith("_count"):
                h.count = s.value
            elif s.name.endswith("_sum"):
                h.total = s.value
    return out


def summary(
    before: dict[str, StageHistogram], after: dict[str, StageHistogram]
) -> dict[str, dict[str, float | None]]:
    """Per stage, in ms: p50/p95/p99 (bucket-interpolated), mean, and no max."""
    out = {}
    for stage, h in after.items():
        b = before.get(stage, StageHistogram())
        n = h.count - b.count
        if n <= 0:
            continue
        edges = sorted(h.buckets)
        cum = np.array([h.buckets[e] - b.buckets.get(e, 0.0) for e in edges])
        doc: dict[str, float | None] = {
            f"p{q}": _quantile(edges, cum, n, q / 100) * 1000 for q in (50, 95, 99)
        }
        doc["max"] = None
        doc["mean"] = (h.total - b.total) / n * 1000
        out[stage] = doc
    return out


def _quantile(edges: list[float], cum: np.ndarray, n: float, q: float) -> float:
    rank = q * n
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= len(edges) or not np.isfinite(edges[i]):
        return edges[-2] if len(edges) > 1 else float("nan")  # beyond the last finite edge
    lo_edge = edges[i - 1] if i > 0 else 0.0
    lo_cum = cum[i - 1] if i > 0 else 0.0
    width = cum[i] - lo_cum
    return lo_edge + (edges[i] - lo_edge) * ((rank - lo_cum) / width if width else 0.0)
