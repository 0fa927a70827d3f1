"""``admatch train``: LightGBM models of engagement, negative feedback and conversion (given
an engagement), calibrated, with metadata.

A model directory holds, for each target, ``{target}.txt`` (the booster at its best iteration)
and, when the compiler is available, ``compiled/{target}.so`` (lleaves); plus the fitted
feature statistics (``feature_stats.json``), the priors the features used (``priors.json``) and
``metadata.json``: the exact feature list with dtypes, the training windows, the parameters and
validation metrics (AUC, log loss, calibration by decile; and, for synthetic logs, the AUC of the
true probabilities on the same rows).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import InvalidArgument
from engine.model import dataset
from engine.model.calibrate import Calibration, fit_calibration, reliability
from engine.model.metrics import auc, calibration, log_loss
from engine.model.runtime import compile_model, compiler_available, file_sha256
from features import Priors
from features.core import feature_order
from features.logio import read_log
from features.taxonomy import load_taxonomy

FORMAT_VERSION = 1
Progress = Callable[[str, int, int], None]


class TrainParams(BaseModel):
    """Training parameters (recorded in metadata.json)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    learning_rate: float = Field(0.02, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(400, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    lambda_l2: float = Field(10.0, ge=0)
    max_rounds: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    folds: int = Field(5, ge=2, le=20, description="time blocks for out-of-fold statistics")
    valid_share: float = Field(0.2, gt=0, lt=0.4)
    threads: int = Field(0, ge=0, description="LightGBM threads; 0 = all cores")
    categorical: bool = Field(True, description="declare categorical features to LightGBM")
    compile: bool | None = Field(None, description="compile with lleaves; None = if available")
    calibrate: bool = Field(
        True, description="recalibrate probabilities on the early-stopping block (Platt)"
    )
    refit_min_outcomes: int = Field(
        1000,
        ge=0,
        description="after early stopping, fit a target again on the fitting and early-stopping "
        "blocks together (for the rounds found) when the early-stopping block holds at least "
        "this many of its rarer outcome; 0 = always",
    )
    refit: bool = Field(True, description="allow the refit (see refit_min_outcomes)")
    allow_constant: bool = Field(
        False, description="train a target whose outcomes are all the same (else an error)"
    )
    taxonomy: str = Field(
        "",
        description="a category taxonomy (the IAB Ad Product Taxonomy's TSV) through which "
        "interest tags match ad categories; kept in the model directory's priors.json",
    )

    def priors(self) -> Priors:
        """The shipped priors, with the taxonomy if one is named.

        Raises:
            InvalidArgument: the taxonomy file cannot be read or is not in its layout.
        """
        priors = Priors.default()
        if not self.taxonomy:
            return priors
        try:
            return replace(priors, taxonomy=load_taxonomy(self.taxonomy))
        except ValueError as exc:
            raise InvalidArgument("taxonomy", str(exc)) from None

    def lightgbm(self) -> dict[str, Any]:
        """LightGBM parameters: deterministic for a seed."""
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.threads,
            "verbosity": -1,
        }


def _fit_one(
    target: str, data: dataset.TrainingData, params: TrainParams, progress: Progress | None
) -> lgb.Booster:
    cats = data.categorical if params.categorical else []
    rows, stop_rows = data.fit.covered(target), data.early_stop.covered(target)
    fit = lgb.Dataset(
        data.fit.x[rows],
        data.fit.labels[target][rows],
        feature_name=data.names,
        categorical_feature=cats,
        free_raw_data=False,
    )
    stop = lgb.Dataset(
        data.early_stop.x[stop_rows], data.early_stop.labels[target][stop_rows], reference=fit
    )
    callbacks: list[Callable[..., None]] = [
        lgb.early_stopping(params.early_stopping_rounds, verbose=False)
    ]
    if progress is not None:
        callbacks.append(
            lambda env: progress(f"{target}, early stopping", env.iteration + 1, params.max_rounds)
        )
    return lgb.train(
        params.lightgbm(),
        fit,
        num_boost_round=params.max_rounds,
        valid_sets=[stop],
        callbacks=callbacks,
    )


def _rarer_outcomes(part: dataset.Part, target: str) -> int:
    """How many of a part's rows have the target's rarer outcome."""
    y = part.labels[target][part.covered(target)]
    positives = int(y.sum())
    return min(positives, len(y) - positives)


def _refit(
    target: str,
    data: dataset.TrainingData,
    params: TrainParams,
    stopped: lgb.Booster,
    progress: Progress | None,
) -> lgb.Booster:
    """The booster fitted again on the fitting and early-stopping blocks together, for the
    early-stopped booster's rounds. The early-stopping block is the latest before validation,
    so the served trees learn from the rows closest to the ones they will score. The rounds
    are not scaled up by the rows: 25% more trees did no better (BENCHMARKS.md) and cost every
    request ~20% more time to score."""
    rows, stop_rows = data.fit.covered(target), data.early_stop.covered(target)
    rounds = max(1, stopped.best_iteration)
    both = lgb.Dataset(
        np.vstack([data.fit.x[rows], data.early_stop.x[stop_rows]]),
        np.concatenate([data.fit.labels[target][rows], data.early_stop.labels[target][stop_rows]]),
        feature_name=data.names,
        categorical_feature=data.categorical if params.categorical else [],
    )
    callbacks: list[Callable[..., None]] = []
    if progress is not None:
        callbacks.append(lambda env: progress(f"{target}, refit", env.iteration + 1, rounds))
    return lgb.train(params.lightgbm(), both, num_boost_round=rounds, callbacks=callbacks)


def _predicted(booster: lgb.Booster, part: dataset.Part, target: str) -> np.ndarray:
    rows = part.covered(target)
    return np.asarray(booster.predict(part.x[rows], num_iteration=booster.best_iteration))


def _calibrate(booster: lgb.Booster, data: dataset.TrainingData, target: str) -> Calibration | None:
    """The logistic recalibration fitted on the early-stopping block (no tree fitted on it)."""
    y = data.early_stop.labels[target][data.early_stop.covered(target)]
    return fit_calibration(_predicted(booster, data.early_stop, target), y)


def _metrics(
    booster: lgb.Booster, part: dataset.Part, target: str, fitted: Calibration | None
) -> tuple[dict[str, Any], Calibration | None]:
    """Validation metrics of the probabilities served, and the calibration served: the
    fitted one when it lowers the validation log loss, else none (the raw probabilities).
    ``calibration`` says which, with the log loss and reliability of both."""
    y = part.labels[target][part.covered(target)]
    raw = _predicted(booster, part, target)
    fit = fitted(raw) if fitted is not None else None
    adopted = fit is not None and log_loss(y, fit) < log_loss(y, raw)
    p = fit if adopted and fit is not None else raw
    out: dict[str, Any] = {
        "auc": auc(y, p),
        "log_loss": log_loss(y, p),
        "rows": len(y),
        "positives": int(y.sum()),
        "trees": booster.best_iteration or booster.num_trees(),
        "calibration": calibration(y, p),
        "reliability": reliability(y, p),
        "recalibration": {
            "fitted": fitted.to_json() if fitted is not None else None,
            "adopted": adopted,
            "raw": {"log_loss": log_loss(y, raw), "reliability": reliability(y, raw)},
            "recalibrated": None
            if fit is None
            else {"log_loss": log_loss(y, fit), "reliability": reliability(y, fit)},
        },
    }
    if target in part.truth:
        truth = part.truth[target][part.covered(target)]
        out["truth_auc"] = auc(y, truth)
        out["truth_log_loss"] = log_loss(y, truth)
    if target in dataset.AMONG:
        out["among"] = dataset.AMONG[target]
    return out, fitted if adopted else None


def feature_list() -> list[dict[str, Any]]:
    """The running feature core's features as metadata records, in matrix order."""
    return [
        {"name": f.name, "dtype": str(f.dtype), "categorical": f.categorical}
        | ({"definition": f.definition} if f.definition else {})
        for f in feature_order()
    ]


def train(
    log_path: Path, out: Path, params: TrainParams, progress: Progress | None = None
) -> dict[str, Any]:
    """Train the models on a log and write the model directory; return its metadata.

    Raises:
        LogSchemaError: the log is invalid.
        InvalidArgument: the log has too few shown rows or no engagement outcomes.
    """
    start = time.perf_counter()
    priors = params.priors()
    data = dataset.build(
        read_log(log_path), priors, params.folds, params.valid_share, params.allow_constant
    )
    out.mkdir(parents=True, exist_ok=True)
    metrics, files = {}, {}
    for target in data.targets:
        stopped = _fit_one(target, data, params, progress)
        # the map is fitted on the early-stopped booster's predictions of the block it did not
        # fit; it goes with the booster served (refit or not) where it lowers the validation
        # log loss (_metrics)
        fitted = _calibrate(stopped, data, target) if params.calibrate else None
        outcomes = _rarer_outcomes(data.early_stop, target)
        refit = params.refit and outcomes >= params.refit_min_outcomes
        booster = _refit(target, data, params, stopped, progress) if refit else stopped
        metrics[target], cal = _metrics(booster, data.validation, target, fitted)
        metrics[target]["best_iteration"] = stopped.best_iteration
        metrics[target]["refit"] = {"done": refit, "early_stopping_rarer_outcomes": outcomes}
        path = out / f"{target}.txt"
        booster.save_model(str(path), num_iteration=booster.best_iteration)
        files[target] = {
            "model": path.name,
            "sha256": file_sha256(path),
            "compiled": None,
            "calibration": cal.to_json() if cal is not None else None,
        }
    data.serving_stats.save(out)
    (out / "priors.json").write_text(json.dumps(priors.to_dict(), indent=1))
    compile_seconds = _compile(out, files, params)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_version": _version(out, files),
        "created_at": datetime.now(UTC).isoformat(),
        "features": feature_list(),
        "targets": files,
        "not_trained": data.not_trained,
        "training": {
            "log": str(log_path),
            "params": params.model_dump(),
            "lightgbm": params.lightgbm(),
            "rows": {"fit": len(data.fit), "early_stopping": len(data.early_stop)},
            "seconds": round(time.perf_counter() - start, 3),
            "compile_seconds": compile_seconds,
        },
        "window": {
            "statistics": data.stats_window.to_json(),
            "fit": data.fit.window.to_json(),
            "early_stopping": data.early_stop.window.to_json(),
        },
        "validation": {**data.validation.window.to_json(), "rows": len(data.validation)},
        "metrics": metrics,
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, default=_json_default))
    return meta


def _compile(out: Path, files: dict[str, dict[str, Any]], params: TrainParams) -> float | None:
    wanted = params.compile if params.compile is not None else compiler_available()
    if not wanted:
        return None
    start = time.perf_counter()
    for target, entry in files.items():
        compiled = compile_model(out / entry["model"], out / "compiled" / f"{target}.so")
        entry["compiled"] = str(compiled.relative_to(out))
    return round(time.perf_counter() - start, 3)


def _version(out: Path, files: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for target in sorted(files):
        h.update(files[target]["sha256"].encode())
        if files[target].get("calibration") is not None:
            h.update(json.dumps(files[target]["calibration"]).encode())
    h.update(file_sha256(out / "feature_stats.json").encode())
    return h.hexdigest()[:12]


def _json_default(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
