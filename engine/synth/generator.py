"""``admatch gen-logs``: a synthetic ad-opportunity log with a known truth.

Steps, all vectorised: population and inventory -> requests -> candidates -> logging policy ->
point-in-time exposures (the feature core's own definition) -> true probabilities -> outcomes.
The same seed gives the same log, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.synth.params import WorldParams
from engine.synth.policy import log_policy
from engine.synth.traffic import build_candidates, build_requests
from engine.synth.truth import (
    conversion_rate,
    engage_logit,
    engage_logit_static,
    negative_logit,
    sigmoid,
)
from engine.synth.world import build_inventory, build_population
from features.exposure import point_in_time_exposures
from features.logio import validate_log, write_log
from features.schema import COLUMNS, NEGATIVE_KINDS, polars_schema

UNMODELLED = (
    "audience",
    "assistant_state",
    "blocked_categories",
    "blocked_advertisers",
    "blocked_attributes",
    "creative_attributes",
    "content_categories",
    "excluded_content",
    "advertiser_domain",
)

# Which negative feedback a user gives, by format family.
_KIND_P = {
    "timed": [0.6, 0.15, 0.12, 0.08, 0.05],  # video, audio: mostly skips
    "static": [0.0, 0.55, 0.15, 0.2, 0.1],  # image, text, interactive: closes and hides
}


@dataclass(frozen=True)
class GeneratedLog:
    """A generated log and its truth document."""

    log: pl.DataFrame
    truth: dict[str, Any]


def generate(params: WorldParams) -> GeneratedLog:
    """Generate ``params.rows`` candidate rows of the synthetic world."""
    params.check_tables()
    rng = np.random.default_rng(params.seed)
    pop = build_population(params, rng)
    ads = build_inventory(params, rng)
    mean_k = sum(params.candidates_per_request) / 2
    n_req = int(params.rows / mean_k * 1.1) + 10
    requests = build_requests(params, pop, rng, n_req)
    rows = build_candidates(params, requests, ads, rng)
    while len(rows) < params.rows:  # rare: repeats dropped more than the 10% margin
        n_req = int(n_req * 1.2)
        requests = build_requests(params, pop, rng, n_req)
        rows = build_candidates(params, requests, ads, rng)
    rows = rows.head(params.rows)
    rows = _apply_policy(params, rows, rng)
    rows = point_in_time_exposures(rows.lazy()).collect()
    rows = _outcomes(params, rows, rng)
    # what the world does not model (who is in front of the screen, the assistant's task,
    # block lists) is unknown
    rows = rows.with_columns(
        pl.lit(None, dtype=c.dtype).alias(c.name) for c in COLUMNS if c.name in UNMODELLED
    )
    log = validate_log(rows.select(polars_schema().names()))
    return GeneratedLog(log=log, truth=_truth_doc(params, ads, log))


def _apply_policy(
    params: WorldParams, rows: pl.DataFrame, rng: np.random.Generator
) -> pl.DataFrame:
    request_index = rows.select(pl.col("request_id").rle_id()).to_series().to_numpy()
    is_pod = (rows["slot"] == "ott_preroll").to_numpy()
    t = params.truth
    value = (
        rows.select(_value_per_impression(sigmoid(engage_logit_static(t)))).to_series().to_numpy()
    )
    noisy_score = value * np.exp(0.3 * rng.standard_normal(len(value)))
    choice = log_policy(params, request_index, is_pod, noisy_score, rng)
    return rows.with_columns(
        pl.Series("shown", choice.shown), pl.Series("propensity", choice.propensity)
    )


def _value_per_impression(p_engage: pl.Expr) -> pl.Expr:
    pricing = pl.col("pricing").cast(pl.String)
    return (
        pl.when(pricing == "cpm")
        .then(pl.col("bid") / 1000.0)
        .when(pricing == "cpc")
        .then(pl.col("bid") * p_engage)
        .otherwise(pl.col("bid") * p_engage * 0.08)
    )


def _outcomes(params: WorldParams, rows: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    t = params.truth
    probs = rows.select(
        sigmoid(engage_logit(t)).alias("true_p_engaged"),
        sigmoid(negative_logit(t)).alias("true_p_negative"),
        conversion_rate(t).alias("conv"),
    )
    n = len(rows)
    p_e = probs["true_p_engaged"].to_numpy()
    p_n = probs["true_p_negative"].to_numpy()
    conv = probs["conv"].to_numpy()
    engaged = rng.random(n) < p_e
    negative = rng.random(n) < p_n
    converted = engaged & (rng.random(n) < conv)
    timed = rows["format"].is_in(["video", "audio"]).to_numpy()
    u_kind = rng.random(n)
    kind = np.where(
        timed,
        np.searchsorted(np.cumsum(_KIND_P["timed"]), u_kind, side="right"),
        np.searchsorted(np.cumsum(_KIND_P["static"]), u_kind, side="right"),
    ).clip(0, len(NEGATIVE_KINDS) - 1)
    skipped = negative & (kind == 0)
    watch = np.where(skipped, rng.uniform(0.05, 0.5, n), np.minimum(rng.beta(8, 1.5, n), 1.0))
    shown = rows["shown"]
    kinds = pl.Series(np.asarray(NEGATIVE_KINDS, dtype=object)[kind].astype(str))
    return rows.with_columns(
        probs["true_p_engaged"],
        probs["true_p_negative"],
        (probs["true_p_engaged"] * probs["conv"]).alias("true_p_converted"),
        pl.when(shown).then(pl.Series(engaged)).alias("engaged"),
        pl.when(shown).then(pl.Series(converted)).alias("converted"),
        pl.when(shown).then(pl.Series(negative)).alias("negative"),
        pl.when(shown & pl.Series(negative)).then(kinds).alias("negative_kind"),
        pl.when(shown & pl.Series(timed)).then(pl.Series(watch)).alias("watch_fraction"),
    )


def _truth_doc(params: WorldParams, ads: pl.DataFrame, log: pl.DataFrame) -> dict[str, Any]:
    shown = log.filter(pl.col("shown"))
    means = shown.select(
        pl.col("true_p_engaged").mean().alias("mean_true_p_engaged_shown"),
        pl.col("true_p_negative").mean().alias("mean_true_p_negative_shown"),
        pl.col("engaged").cast(pl.Float64).mean().alias("engaged_rate_shown"),
        pl.col("negative").cast(pl.Float64).mean().alias("negative_rate_shown"),
    ).row(0, named=True)
    return {
        "schema_version": 1,
        "params": params.model_dump(mode="json"),
        "ads": ads.select(
            "ad_id",
            "campaign_id",
            "advertiser_id",
            "category",
            "format",
            "duration_s",
            "bid",
            "pricing",
            "quality",
        ).to_dicts(),
        "summary": {
            "rows": len(log),
            "requests": log["request_id"].n_unique(),
            "impressions": len(shown),
            **{k: float(v or 0.0) for k, v in means.items()},
        },
    }


def truth_path(log_path: Path) -> Path:
    """Where the truth document of a log lives: ``<log>.truth.json``."""
    return log_path.with_name(log_path.name + ".truth.json")


def write_generated(generated: GeneratedLog, out: Path) -> Path:
    """Write the log (Parquet) and its truth (JSON next to it); return the truth's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_log(generated.log, out)
    path = truth_path(out)
    path.write_text(json.dumps(generated.truth, indent=1, sort_keys=True))
    return path
