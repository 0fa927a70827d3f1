"""From a replay's collected measurements to its report (figures, checks, files)."""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from engine.caps.rules import parse_duration
from engine.replay import capcheck, plots, quality, server_stages
from engine.replay.engines import STAGES
from engine.replay.floor import Floor
from engine.replay.report import (
    SCHEMA_VERSION,
    environment,
    markdown,
    percentiles_ms,
    write_json,
)

if TYPE_CHECKING:
    from engine.replay.run import Replayed, ReplayOptions, Session


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def build_report(o: ReplayOptions, s: Session, r: Replayed, floor: Floor | None) -> dict[str, Any]:
    """The report document (``report.json``; keys documented in docs/replay.md)."""
    from engine.replay.run import ads_per_user_day

    c = r.collector
    busy = s.engine.busy_seconds()
    basis_s = busy if busy > 0 else r.wall_s
    per_s = c.requests / basis_s if basis_s else 0.0
    cand_per_s = c.candidates / basis_s if basis_s else 0.0
    stages, source = _stages(o, s, r)
    violations = _violations(s, r)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["admatch", *sys.argv[1:]]) if sys.argv else "",
        "log": {"path": str(o.log), "mapping": o.mapping},
        "engine": {
            **s.describe,
            "record": o.record,
            "reserve": o.reserve,
            "fresh_state": o.fresh_state,
        },
        "requests": c.requests,
        "candidates": c.candidates,
        "wall_seconds": r.wall_s,
        "throughput": {
            "requests_per_s": per_s,
            "candidates_per_s": cand_per_s,
            "basis": "engine busy time (one worker)" if busy > 0 else "wall clock",
            "engine_busy_seconds": busy if busy > 0 else None,
            "wall_requests_per_s": c.requests / r.wall_s if r.wall_s else 0.0,
            "harness_cpu_seconds": r.cpu_s,
            "mean_batch_requests": _mean_batch(s, c.requests),
        },
        "latency_ms": percentiles_ms(_concat(c.latency)),
        "stages_ms": stages,
        "stages_source": source,
        "errors": {
            "total": sum(c.errors.values()),
            "by_status": dict(c.errors),
            "by_message": [
                {
                    "status": status,
                    "message": rule,
                    "example": c.error_examples[(status, rule)],
                    "requests": n,
                }
                for (status, rule), n in c.error_messages.most_common()
            ],
            "record_errors": dict(getattr(s.engine, "record_errors", {})),
            "cap_read_errors": getattr(s.engine, "cap_read_errors", None),
        },
        "floor": _floor(floor, cand_per_s, s.group),
        "decisions": {
            "fill_rate": c.filled / c.requests if c.requests else 0.0,
            "selected_ads": c.selections.rows,
            "no_ad_requests": sum(c.no_ad.values()),
            "cap_store_unavailable_requests": c.store_unavailable,
            "candidates_by_reason": c.by_reason(),
            "no_ad_share": {
                k: v / c.requests for k, v in sorted(c.no_ad.items(), key=lambda kv: -kv[1])
            },
            "cap_violations": len(violations),
            "cap_violations_by_rule": dict(
                violations.group_by("rule").len().sort("rule").iter_rows()
            ),
            "ads_per_user_day": ads_per_user_day(c),
        },
        "quality": {"user_fit": quality.user_fit(c), "off_policy": quality.off_policy(c)},
        "timeline": [[round(t, 3), n] for t, n in c.timeline],
        "environment": environment(),
    }
    if len(violations):
        violations.write_parquet(o.report_dir / "cap_violations.parquet")
    return report


def _mean_batch(s: Session, requests: int) -> float | None:
    batches = getattr(s.engine, "batches", 0)
    return requests / batches if batches else None


def _stages(o: ReplayOptions, s: Session, r: Replayed) -> tuple[dict[str, Any], str]:
    c = r.collector
    if s.describe["mode"] == "in-process":
        doc = {k: percentiles_ms(_concat(c.stages[k])) for k in STAGES}
        return doc, "measured per request in process (batched stages: the batch's pass)"
    if o.metrics_url and s.metrics_before is not None:
        after = server_stages.scrape(o.metrics_url)
        return server_stages.summary(s.metrics_before, after), "server histogram"
    return {}, "not available over gRPC without --metrics-url"


def _violations(s: Session, r: Replayed) -> pl.DataFrame:
    c = r.collector
    if not c.selections:
        return pl.DataFrame(schema=capcheck.VIOLATION_SCHEMA)
    selections = c.selections.frame()
    if c.history_is_selections:
        history = selections
    else:
        history = c.history.frame() if c.history else selections.clear()
    return capcheck.violations(
        selections,
        history,
        c.feedback.frame() if c.feedback else pl.DataFrame(),
        s.config.caps,
        parse_duration(s.config.store.retention),
    )


def _floor(floor: Floor | None, candidates_per_s: float, group: int) -> dict[str, Any]:
    if floor is None:
        return {
            "model_candidates_per_s": None,
            "ratio": None,
            "runtime": None,
            "runtime_candidates_per_s": None,
            "note": "no model directory here (--model) to time the raw model call",
        }
    model = floor.model_candidates_per_s
    return {
        "model_candidates_per_s": model,
        "ratio": candidates_per_s / model if model else None,
        "runtime": floor.runtime,
        "runtime_candidates_per_s": floor.runtime_candidates_per_s,
        "runtime_ratio": candidates_per_s / floor.runtime_candidates_per_s,
        "candidates": floor.candidates,
        "requests_per_call": group,
    }


def write_report(report: dict[str, Any], r: Replayed, o: ReplayOptions) -> None:
    """report.json, report.md and (``o.plots``) the PNG plots."""
    write_json(report, o.report_dir)
    (o.report_dir / "report.md").write_text(markdown(report) + "\n")
    if not o.plots:
        return
    c = r.collector
    stages = {k: _concat(c.stages[k]) for k in STAGES if any(len(x) for x in c.stages[k])}
    plots.latency_histogram(stages, _concat(c.latency), o.report_dir / "latency.png")
    plots.throughput_over_time(c.timeline, o.report_dir / "throughput.png")
    headline = quality.headline(report["quality"]["off_policy"])
    plots.revenue_vs_cost(headline, o.report_dir / "revenue_vs_cost.png")
