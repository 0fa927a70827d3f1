"""Decision quality of a replay: user fit on shown rows and off-policy value estimates.

* User fit: AUC and log loss of the engine's P(engage) and P(negative) against the outcomes of
  the rows the log showed.
* Off-policy: IPS, self-normalised IPS and doubly robust estimates (``engine.ope``) of the
  engine's engagements, revenue and negative feedback per request, next to the logging
  policy's own (on-policy) values. On a synthetic log the true values come from the
  generator's per-row truth, with each estimate's error against it and whether its interval
  covers it. The truth is that of the log's exposure history: it is exact when the replay
  recorded what the log showed and an approximation when the engine's own picks changed the
  fatigue of later requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.model.metrics import auc, log_loss
from engine.ope import Estimate
from engine.replay.collect import REWARDS, Collector

ESTIMATORS = ("ips", "snips", "dr")


def user_fit(collector: Collector) -> dict[str, Any]:
    """AUC and log loss per target over the shown rows with an outcome."""
    out: dict[str, Any] = {}
    for target, parts in collector.fit.items():
        y = np.concatenate([y for y, _ in parts]) if parts else np.zeros(0, dtype=bool)
        p = np.concatenate([p for _, p in parts]) if parts else np.zeros(0)
        out[target] = {
            "rows": len(y),
            "positives": int(y.sum()),
            "auc": auc(y, p) if len(y) else None,
            "log_loss": log_loss(y, p) if len(y) else None,
        }
    return out


def _estimate(e: Estimate, truth: float | None) -> dict[str, Any]:
    doc: dict[str, Any] = e.to_dict()
    if truth is not None and np.isfinite(truth):
        doc["error"] = e.value - truth
        doc["covers_truth"] = bool(e.covers(truth))
    return doc


def off_policy(collector: Collector) -> dict[str, Any]:
    """The engine's and the logging policy's values per reward (see the module doc)."""
    if collector.ope_problem is not None:
        return {"available": False, "reason": collector.ope_problem}
    if not any(collector.ope[r].requests for r in REWARDS):
        return {"available": False, "reason": "no requests replayed"}
    doc: dict[str, Any] = {"available": True, "engine": {}, "logging": {}}
    for reward in REWARDS:
        engine = collector.ope[reward]
        logging = collector.logging_truth[reward]
        truth = engine.true_value()
        has_truth = bool(np.isfinite(truth))
        doc["engine"][reward] = {
            "ips": _estimate(engine.ips_estimate(), truth),
            "snips": _estimate(engine.snips_estimate(), truth),
            "dr": _estimate(engine.dr_estimate(), truth),
            "truth": truth if has_truth else None,
        }
        logged_truth = logging.true_value()
        doc["logging"][reward] = {
            "on_policy": _estimate(engine.on_policy(), logged_truth),
            "truth": logged_truth if has_truth else None,
        }
    engine = collector.ope["engagement"]
    doc["engine"]["ads_per_request"] = engine.target_ads / engine.requests
    doc["logging"]["ads_per_request"] = engine.shown / engine.requests
    doc["matched_events"] = int(engine.matched)
    return doc


def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """Engine vs logging policy per reward, by the doubly robust estimate (for plots)."""
    if not doc.get("available"):
        return {}
    return {
        reward: {
            "engine": doc["engine"][reward]["dr"],
            "logging": doc["logging"][reward]["on_policy"],
        }
        for reward in REWARDS
    }
