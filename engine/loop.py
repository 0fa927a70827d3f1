"""The nightly job of the learning loop (``admatch nightly``, docs/loop.md).

For one UTC day: join the day's decisions and events into the ad-opportunity log
(``engine.logs.join``), train a model on the last ``train_days`` days of joined logs, tune the
experience-cost weights on the day's log with its logged propensities, and hot-load the new
model and the recommended config into a running server (``ReloadModel``: all its workers, all
or nothing). Each step writes into ``work``; ``work/nightly/<day>.json`` says what each did. A
day without a recommendation (no trial trusted and feasible) keeps the config serving and
loads the new model alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from engine.config import load_config
from engine.errors import InvalidArgument
from engine.logs.converter import convert_pending
from engine.logs.join import Windows, join_logs
from features.logio import read_log, validate_log, write_log

TRUTH_COLUMNS = ("true_p_engaged", "true_p_negative", "true_p_converted")


@dataclass(frozen=True)
class NightlyOptions:
    """What one night learns from and where it writes.

    Attributes:
        logs: the server's decision log directory (or URI).
        work: where the joined logs, models, tuning reports and configs go.
        day: the UTC day to learn from.
        config_path: the config serving now (the tuner's base: ranges, constraints...).
        train_days: days of joined logs the model is trained on (the last ones, this included).
        trials, truth_trials, seed: of the tuner.
        truth: a synthetic world's true probabilities per (request_id, ad_id), attached to the
            day's log so the tuner reports its regret against the truth.
        target: a server to reload (host:port); its operator token comes from
            ``ADMATCH_OPERATOR_TOKEN``.
        compile: compile the model with lleaves (None: if installed).
    """

    logs: str
    work: Path
    day: date
    config_path: Path
    train_days: int = 3
    trials: int = 40
    truth_trials: int = 0
    seed: int = 0
    truth: Path | None = None
    target: str | None = None
    compile: bool | None = None


def _paths(o: NightlyOptions, day: date) -> dict[str, Path]:
    name = day.isoformat()
    return {
        "log": o.work / "logs" / f"{name}.parquet",
        "train": o.work / "train" / f"{name}.parquet",
        "model": o.work / "models" / name,
        "tune": o.work / "tune" / name,
        "config": o.work / "configs" / f"{name}.toml",
        "report": o.work / "nightly" / f"{name}.json",
    }


def join_day(o: NightlyOptions) -> dict[str, Any]:
    """The day's decisions and events as its ad-opportunity log (with the truth if given)."""
    config = load_config(o.config_path)
    c = config.decision_log
    convert_pending(o.logs, config)  # what the converters have not written yet
    windows = Windows.of(c.engaged_window, c.converted_window, c.negative_window)
    start = datetime(o.day.year, o.day.month, o.day.day, tzinfo=UTC)
    path = _paths(o, o.day)["log"]
    report = join_logs(o.logs, path, windows, since=start, until=start + timedelta(days=1))
    if o.truth is not None:
        truth = pl.read_parquet(o.truth).select("request_id", "ad_id", *TRUTH_COLUMNS)
        log = read_log(path).drop(TRUTH_COLUMNS, strict=False)
        joined = log.join(truth, on=["request_id", "ad_id"], how="left", maintain_order="left")
        write_log(validate_log(joined), path)
    return report


def training_window(o: NightlyOptions) -> Path:
    """The last ``train_days`` joined day logs in one file (the days there are)."""
    days = [o.day - timedelta(days=k) for k in range(o.train_days)]
    logs = [_paths(o, d)["log"] for d in reversed(days)]
    present = [p for p in logs if p.exists()]
    if not present:
        raise InvalidArgument("--day", f"no joined log for {o.day} in {o.work / 'logs'}")
    out = _paths(o, o.day)["train"]
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = [read_log(p) for p in present]
    write_log(pl.concat(frames, how="diagonal_relaxed"), out)
    return out


def history(o: NightlyOptions) -> tuple[Path, ...]:
    """The earlier days' joined logs as far back as a cap or the fatigue cost looks (the
    days there are): the tuner's counters start from their impressions."""
    from engine.tune.data import lookback_s

    back = lookback_s(load_config(o.config_path))
    days = 366 if back == float("inf") else math.ceil(back / 86_400)
    logs = [_paths(o, o.day - timedelta(days=k))["log"] for k in range(days, 0, -1)]
    return tuple(p for p in logs if p.exists())


def nightly(o: NightlyOptions) -> dict[str, Any]:
    """Join, train, tune and reload for one day; the report (also written to
    ``work/nightly/<day>.json``).

    Raises:
        InvalidArgument, LogSchemaError, ModelError: a step could not run (nothing is
            reloaded then).
    """
    from engine.model.train import TrainParams, train
    from engine.tune.run import TuneOptions, tune

    paths = _paths(o, o.day)
    started = time.perf_counter()
    joined = join_day(o)
    window = training_window(o)
    # interests match through the taxonomy the serving config's protections name
    taxonomy = load_config(o.config_path).protections.taxonomy
    params = TrainParams(seed=o.seed, compile=o.compile, taxonomy=taxonomy)
    meta = train(window, paths["model"], params)
    tuned = tune(
        TuneOptions(
            log=paths["log"],
            model_dir=paths["model"],
            out=paths["config"],
            report_dir=paths["tune"],
            config_path=o.config_path,
            trials=o.trials,
            seed=o.seed,
            truth_trials=o.truth_trials,
            plots=False,
            history=history(o),
        )
    )
    config = paths["config"] if tuned["chosen"] is not None else o.config_path
    report: dict[str, Any] = {
        "day": o.day.isoformat(),
        "join": joined,
        "model": {"dir": str(paths["model"]), "version": meta["model_version"]},
        "model_metrics": meta["metrics"],
        "tune": {
            "chosen": tuned["chosen"],
            "current": tuned["current"],
            "truth": tuned.get("truth"),
            "report": str(paths["tune"] / "report.json"),
        },
        "config": str(config),
        "reloaded": reload(o.target, paths["model"], config) if o.target else None,
    }
    report["seconds"] = time.perf_counter() - started
    paths["report"].parent.mkdir(parents=True, exist_ok=True)
    paths["report"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def reload(target: str, model_dir: Path, config: Path) -> dict[str, Any]:
    """ReloadModel on ``target`` (every worker, all or nothing); what serves now."""
    import grpc

    from admatch.v1 import admatch_pb2 as pb
    from admatch.v1 import admatch_pb2_grpc as pb_grpc
    from engine.rpc.auth import ENV

    token = os.environ.get(ENV, "")
    request = pb.ReloadModelRequest(
        model_dir=str(model_dir.resolve()), config_path=str(config.resolve())
    )
    with grpc.insecure_channel(target) as channel:
        info = pb_grpc.AdMatchingStub(channel).ReloadModel(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=600
        )
    return {
        "model_version": info.model_version,
        "config_version": info.config_version,
        "workers": list(info.workers),
    }
