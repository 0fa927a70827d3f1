"""What ``admatch tune`` writes: the recommended config, report.json, report.md, the plot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tomli_w

from engine.config import AdmatchConfig, load_config
from engine.replay.report import environment
from engine.tune.choice import TrialRecord

MEASURES = (
    ("negative", "negative feedback per request"),
    ("ads_per_user_day", "ads per user-day"),
    ("ads_per_household_day", "ads per household-day"),
    ("fill_rate", "fill rate"),
)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def tuned_config(config: AdmatchConfig, params: dict[str, float]) -> tuple[str, AdmatchConfig]:
    """The base config with the tuned parameters, as TOML text and validated, with a
    version naming its parameters (``tuned-<hash>``)."""
    doc = config.model_dump(mode="json")
    scoring = doc["scoring"]
    for name, value in params.items():
        if name.startswith("weights."):
            scoring["weights"][name.removeprefix("weights.")] = value
        else:
            scoring[name] = value
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    doc["version"] = f"tuned-{digest}"
    text = "# written by admatch tune: the base config with the recommended scoring values\n"
    text += tomli_w.dumps(_drop_none(doc))
    return text, config.model_validate(doc)


def write_config(config: AdmatchConfig, params: dict[str, float], out: Path) -> str:
    """Write the recommended config (checked by loading it back); return its version."""
    text, tuned = tuned_config(config, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    if load_config(tmp) != tuned:
        raise RuntimeError("the written config does not load back to itself")
    tmp.replace(out)  # atomic: a server watching the file never reads half of it
    return tuned.version


def _row(r: TrialRecord, estimator: str) -> dict[str, Any]:
    e = r.evaluation
    est = e["estimates"]
    return {
        "trial": r.number,
        "params": r.params,
        "revenue": est["revenue"][estimator],
        "revenue_smoothed": est["revenue_smoothed"][estimator],
        "objectives": r.objectives,
        "negative": est["negative"][estimator],
        "engagement": est["engagement"][estimator],
        "ads_per_user_day": e["ads_per_user_day"],
        "ads_per_household_day": e["ads_per_household_day"],
        "household_day": e["household_day"],
        "fill_rate": e["fill_rate"],
        "matched": e["matched"],
        "feasible": r.feasible,
        "flagged": r.flagged,
        "truth": e.get("truth"),
    }


def write_outputs(
    ctx: dict[str, Any],
    records: list[TrialRecord],
    chosen: TrialRecord | None,
    front: list[TrialRecord],
    truth: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write every output; return report.json's content."""
    from engine.tune.report import markdown, plot_frontier

    o, est = ctx["options"], ctx["estimator"]
    current = records[0] if records and records[0].number == 0 else None
    version = None
    if chosen is not None:
        version = write_config(ctx["config"], chosen.params, o.out)
    seconds = [r.seconds for r in records if r.seconds > 0]
    mean_s = sum(seconds) / len(seconds) if seconds else None
    report = {
        "schema_version": 1,
        "log": str(o.log),
        "model_version": ctx["model_version"],
        "rows": ctx["rows"],
        "requests": ctx["requests"],
        "history": {
            "logs": [str(p) for p in o.history],
            "impressions": ctx["history_impressions"],
        },
        "study": ctx["study"],
        "storage": o.storage or str(o.report_dir / "study.journal"),
        "trials": len(records),
        "estimator": est,
        "objective": "maximise revenue per request subject to the constraints",
        "constraints": ctx["limits"].to_dict(),
        "assumptions": ctx.get("assumptions", []),
        "current": _row(current, est) if current else {"evaluation": ctx["current"].to_dict()},
        "chosen": None
        if chosen is None
        else {**_row(chosen, est), "config": str(o.out), "config_version": version},
        "frontier": [_row(r, est) for r in front],
        "truth": truth,
        "timing": {
            "prepare_seconds": ctx["prepare_seconds"],
            "trial_seconds_mean": mean_s,
            "trials_per_minute": 60 / mean_s if mean_s else None,
        },
        "environment": environment(),
    }
    if chosen is None:
        report["note"] = "no trial met every constraint with enough evidence: no config written"
    (o.report_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (o.report_dir / "report.md").write_text(markdown(report) + "\n")
    if o.plots:
        plot_frontier([_row(r, est) for r in records], report, o.report_dir / "frontier.png")
    return report
