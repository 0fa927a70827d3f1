"""The replay report: ``report.json`` (stable keys, see ``docs/replay.md``) and ``report.md``."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
_PACKAGES = ("polars", "pyarrow", "numpy", "lightgbm", "lleaves", "grpcio", "redis", "protobuf")


def percentiles_ms(seconds: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in milliseconds of the finite values (``None`` when empty)."""
    x = np.asarray(seconds, dtype=np.float64)
    x = x[np.isfinite(x)] * 1000
    if not len(x):
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(x.max()),
        "mean": float(x.mean()),
    }


def environment() -> dict[str, Any]:
    """CPU, cores, OS, Python and the versions of the packages that set the speed."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "polars_max_threads": os.environ.get("POLARS_MAX_THREADS"),
        "versions": versions,
    }


def write_json(report: dict[str, Any], directory: Path) -> Path:
    """Write ``report.json``."""
    path = directory / "report.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=False, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1
            else f"{value:,.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines + [""]


MESSAGES = 20  # error messages report.md lists, most frequent first


def markdown(r: dict[str, Any]) -> str:
    """``report.md``: the report as readable tables."""
    eng, thr, lat = r["engine"], r["throughput"], r["latency_ms"]
    out = [f"# Replay of {r['log']['path']}", "", f"{r['created_at']}; `{r['command']}`", ""]
    out += ["## Engine", ""]
    out += _table(["key", "value"], [[k, v] for k, v in eng.items()])
    out += ["## Throughput and latency", ""]
    out += _table(
        [
            "requests",
            "candidates",
            "requests/s",
            "candidates/s",
            "basis",
            "requests per pass",
            "wall s",
            "errors",
        ],
        [
            [
                r["requests"],
                r["candidates"],
                thr["requests_per_s"],
                thr["candidates_per_s"],
                thr["basis"],
                "-" if thr.get("mean_batch_requests") is None else thr["mean_batch_requests"],
                r["wall_seconds"],
                r["errors"]["total"],
            ]
        ],
    )
    stages = [["total", *(lat[k] for k in ("p50", "p95", "p99", "max", "mean"))]]
    stages += [
        [name, *(s[k] for k in ("p50", "p95", "p99", "max", "mean"))]
        for name, s in r["stages_ms"].items()
    ]
    out += [f"Latency in ms (stages: {r['stages_source']}):", ""]
    out += _table(["stage", "p50", "p95", "p99", "max", "mean"], stages)
    if r["errors"]["by_status"]:
        out += _table(["status", "requests"], [[k, v] for k, v in r["errors"]["by_status"].items()])
    if r["errors"].get("by_message"):
        out += ["Failed requests by message (`error` in decisions.parquet has each one's):", ""]
        out += _table(
            ["status", "requests", "message", "first"],
            [
                [e["status"], e["requests"], e["message"], e["example"]]
                for e in r["errors"]["by_message"][:MESSAGES]
            ],
        )
    store = _store_errors(r["errors"])
    if store:
        out += ["Cap-store calls that failed (their requests failed closed or open; events lost):"]
        out += ["", *_table(["call", "status", "count"], store)]
    f = r["floor"]
    out += ["## Floor: the raw model call alone on the same rows", ""]
    out += _table(
        ["LightGBM candidates/s", "ratio engine/LightGBM", "runtime", "runtime candidates/s"],
        [[f["model_candidates_per_s"], f["ratio"], f["runtime"], f["runtime_candidates_per_s"]]],
    )
    d = r["decisions"]
    out += ["## Decisions", ""]
    out += _table(
        ["fill rate", "ads selected", "cap violations", "no-ad requests", "without cap store"],
        [
            [
                d["fill_rate"],
                d["selected_ads"],
                d["cap_violations"],
                d["no_ad_requests"],
                d.get("cap_store_unavailable_requests", 0),
            ]
        ],
    )
    if d["no_ad_share"]:
        out += _table(["no-ad reason", "share of requests"], list(d["no_ad_share"].items()))
    if d.get("candidates_by_reason"):
        out += ["Candidates by reason (the protections among them):", ""]
        out += _table(["reason", "candidates"], list(d["candidates_by_reason"].items()))
    load = [
        [tp, v["engine"]["mean"], v["engine"]["p95"], v["engine"]["max"], v["logged"]["mean"]]
        for tp, v in d["ads_per_user_day"].items()
    ]
    out += ["Ads per active user and day, by touchpoint:", ""]
    out += _table(["touchpoint", "engine mean", "engine p95", "engine max", "log mean"], load)
    out += _quality_md(r["quality"])
    env = r["environment"]
    out += ["## Environment", ""]
    out += _table(
        ["cpu", "cores", "python", "platform"],
        [[env["cpu"], env["cores"], env["python"], env["platform"]]],
    )
    out += _table(["package", "version"], list(env["versions"].items()))
    return "\n".join(out)


def _quality_md(q: dict[str, Any]) -> list[str]:
    out = ["## Quality", ""]
    fit = q["user_fit"]
    out += _table(
        ["target", "shown rows", "positives", "AUC", "log loss"],
        [[t, v["rows"], v["positives"], v["auc"], v["log_loss"]] for t, v in fit.items()],
    )
    ope = q["off_policy"]
    if not ope.get("available"):
        return out + [f"Off-policy estimates: not available ({ope.get('reason')}).", ""]
    out += ["Per request, 95% intervals; the engine off-policy, the log's policy on-policy:", ""]
    rows = []
    for reward in ("engagement", "revenue", "negative"):
        e, g = ope["engine"][reward], ope["logging"][reward]
        for name in ("ips", "snips", "dr"):
            est = e[name]
            rows.append(
                [reward, f"engine {name}", est["value"], est["low"], est["high"], e["truth"]]
            )
        on = g["on_policy"]
        rows.append([reward, "log (on-policy)", on["value"], on["low"], on["high"], g["truth"]])
    out += _table(["reward", "policy", "value", "low", "high", "truth"], rows)
    out.append(
        f"Ads per request: engine {_num(ope['engine']['ads_per_request'])}, log "
        f"{_num(ope['logging']['ads_per_request'])}; matched events {ope['matched_events']:,}."
    )
    return out + [""]


def _store_errors(errors: dict[str, Any]) -> list[list[Any]]:
    """Rows of failed cap-store reads (in process) and event records, if any."""
    rows: list[list[Any]] = []
    if errors.get("cap_read_errors"):
        rows.append(["read", "UNAVAILABLE", errors["cap_read_errors"]])
    rows += [["record", k, v] for k, v in errors.get("record_errors", {}).items()]
    return rows
