"""``admatch replay compare A B``: two reports side by side, with B/A ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument

# (label, dotted key, higher is better) of the figures worth comparing
FIGURES = (
    ("requests", "requests", None),
    ("candidates", "candidates", None),
    ("requests/s", "throughput.requests_per_s", True),
    ("candidates/s", "throughput.candidates_per_s", True),
    ("latency p50 ms", "latency_ms.p50", False),
    ("latency p95 ms", "latency_ms.p95", False),
    ("latency p99 ms", "latency_ms.p99", False),
    ("latency max ms", "latency_ms.max", False),
    ("floor LightGBM candidates/s", "floor.model_candidates_per_s", True),
    ("floor ratio", "floor.ratio", True),
    ("errors", "errors.total", False),
    ("fill rate", "decisions.fill_rate", None),
    ("cap violations", "decisions.cap_violations", False),
    ("AUC engaged", "quality.user_fit.engaged.auc", True),
    ("AUC negative", "quality.user_fit.negative.auc", True),
    ("engagement/request (DR)", "quality.off_policy.engine.engagement.dr.value", True),
    ("revenue/request (DR)", "quality.off_policy.engine.revenue.dr.value", True),
    ("negative/request (DR)", "quality.off_policy.engine.negative.dr.value", False),
)


def load_report(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` (a directory holding one works too).

    Raises:
        InvalidArgument: the file is missing or not a replay report.
    """
    if path.is_dir():
        path = path / "report.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(str(path), "no such report") from exc
    except ValueError as exc:
        raise InvalidArgument(str(path), f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or "throughput" not in doc or "schema_version" not in doc:
        raise InvalidArgument(str(path), "not a replay report.json")
    return doc


def lookup(doc: dict[str, Any], key: str) -> Any:
    """The value at a dotted key, ``None`` where absent."""
    value: Any = doc
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any, float | None, str]]:
    """Rows of (figure, A, B, B/A, verdict): verdict says whether B is better, worse or the
    same within 2% for figures with a direction."""
    rows = []
    for label, key, higher_better in FIGURES:
        va, vb = lookup(a, key), lookup(b, key)
        ratio = None
        if isinstance(va, int | float) and isinstance(vb, int | float) and va:
            ratio = vb / va
        rows.append((label, va, vb, ratio, _verdict(ratio, va, vb, higher_better)))
    return rows


def _verdict(ratio: float | None, va: Any, vb: Any, higher_better: bool | None) -> str:
    if higher_better is None:
        return ""
    if ratio is None:
        if va == 0 and isinstance(vb, int | float) and vb:  # from zero: any change is big
            return "better" if higher_better else "worse"
        return ""
    if abs(ratio - 1) <= 0.02:
        return "same"
    return "better" if (ratio > 1) == higher_better else "worse"
