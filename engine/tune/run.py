"""``admatch tune``: prepare the log once, search, choose, check against the truth, report.

Parallel trials run in ``jobs`` processes forked after the preparation (they share its arrays
copy-on-write and their own connection to the study's storage); other machines join a study
by running the same command with the same ``--storage`` and ``--study``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from engine.config import AdmatchConfig, TuningConfig, load_config
from engine.errors import InvalidArgument
from engine.tune.choice import TrialRecord, frontier, recommend
from engine.tune.data import prepare
from engine.tune.evaluate import Evaluator
from engine.tune.search import (
    Limits,
    Objective,
    completed,
    measures,
    open_study,
    storage,
)
from engine.tune.simulate import Policy, Simulator
from engine.tune.warm import SCALES, scaled, to_the_bound

Progress = Callable[[int, int], None]  # trials complete, trials wanted


@dataclass(frozen=True)
class TuneOptions:
    """What ``admatch tune`` was asked.

    Attributes:
        log, model_dir: the log to tune on and the model that scores it.
        out: the recommended config (TOML) to write.
        report_dir: report.json, report.md, the frontier plot and (default) the study journal.
        config_path: the base config: ranges, constraints, everything not tuned.
        trials: complete trials the study should reach (resumed studies count theirs).
        jobs: processes running trials at once.
        seed: the samplers' seed (process k uses seed + k).
        storage: optuna storage URL (default: a journal file in the report directory).
        study: study name (default: derived from the log, model and seed).
        direct_method: without propensities, fall back to the model's own predictions.
        truth_trials: trials of the true-optimum search (default: ``trials``; 0 skips it).
        constraints: overrides of ``tuning.constraints`` (same keys).
        history: earlier logs (the previous days'): every trial's caps and fatigue start from
            their impressions, as the live cap store's did.
    """

    log: Path
    model_dir: Path
    out: Path
    report_dir: Path
    config_path: Path | None = None
    trials: int = 100
    jobs: int = 1
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    direct_method: bool = False
    truth_trials: int | None = None
    constraints: dict[str, Any] = field(default_factory=dict)
    plots: bool = True
    history: tuple[Path, ...] = ()


def _config(o: TuneOptions) -> AdmatchConfig:
    config = load_config(o.config_path)
    if not o.constraints:
        return config
    from engine.config import parse_config

    doc = config.model_dump(mode="json")
    doc["tuning"]["constraints"].update(o.constraints)
    return parse_config(doc, "config with --constraint options")


def study_name(o: TuneOptions, model_version: str) -> str:
    """Default study name: the same log, model and seed resume the same study."""
    if o.study:
        return o.study
    digest = hashlib.sha256(f"{o.log.resolve()}|{model_version}|{o.seed}".encode()).hexdigest()
    return f"admatch-tune-{digest[:12]}"


def _worker(make: Callable[[int], optuna.Study], objective: Objective, total: int, k: int) -> None:
    from engine.tune import search

    search.WORKER = f"{socket.gethostname()}:{os.getpid()}"
    study = make(k)
    left = total - len(completed(study))
    if left > 0:
        cb = optuna.study.MaxTrialsCallback(total, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, n_trials=left, callbacks=[cb])


def run_trials(
    make: Callable[[int], optuna.Study],
    objective: Objective,
    total: int,
    jobs: int,
    progress: Progress | None,
) -> optuna.Study:
    """Run trials until the study has ``total`` complete ones, in ``jobs`` processes."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(make, objective, total, k)) for k in range(1, jobs)]
    for p in procs:
        p.start()
    study = make(0)
    left = total - len(completed(study))

    def report(s: optuna.Study, _t: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress(len(completed(s)), total)

    if left > 0:
        cb = optuna.study.MaxTrialsCallback(total, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, n_trials=left, callbacks=[cb, report])
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a tuning worker process failed (exit code {p.exitcode})")
    return study


def warm_start(
    study: optuna.Study, objective: Objective, base: Policy, tuning: TuningConfig, budget: int
) -> None:
    """Run the warm start (``engine.tune.warm``) as the study's first trials, in this
    process, within the trial budget."""
    negative: dict[float, float] = {}

    def run(params: dict[str, float]) -> float:
        if len(study.trials) >= budget:
            return float("nan")
        study.enqueue_trial(params)
        study.optimize(objective, n_trials=1)
        return float(study.trials[-1].user_attrs["measures"]["negative"])

    factors = [1.0, *(f for f in SCALES if f != 1.0)]
    for f in factors:
        negative[f] = run(scaled(base, tuning, f))
    if objective.limits.max_negative is not None:
        to_the_bound(run, base, tuning, objective.limits.max_negative, negative)


def tune(o: TuneOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the tuning job and write its outputs; return the report.

    Raises:
        InvalidArgument: bad options, a log that breaks the schema, a log without
            propensities (unless ``direct_method``), an unknown storage URL.
    """
    from engine.tune.output import write_outputs

    if o.trials < 1 or o.jobs < 1:
        raise InvalidArgument("--trials" if o.trials < 1 else "--jobs", "must be at least 1")
    config = _config(o)
    tuning = config.tuning
    o.report_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="admatch-tune-") as work:
        data = prepare(o.log, o.model_dir, config, Path(work), o.history)
    prepare_s = time.perf_counter() - start
    simulator, evaluator = Simulator(data, config), Evaluator(data, o.direct_method)
    base = Policy.from_config(config)
    current = evaluator(simulator.run(base))
    est = tuning.estimator if evaluator.logged is not None else "dm"
    constraints = tuning.constraints
    if not data.negative_known:  # a bound on an unrecorded outcome would be a bound at 0
        constraints = constraints.model_copy(
            update={"max_negative_rate": None, "negative_vs_current": None}
        )
    limits = Limits.resolve(
        constraints, measures(current, est), tuning.min_matched_events, tuning.require_fill
    )
    objective = Objective(simulator, evaluator, tuning, base, limits)
    name = study_name(o, data.model_version)

    def make(k: int) -> optuna.Study:
        study = open_study(storage(o.storage, o.report_dir), name, tuning, o.seed + k)
        return study

    first = make(0)
    if not first.trials:  # a new study starts from the current weights (trial 0)
        warm_start(first, objective, base, tuning, o.trials)
    study = run_trials(make, objective, o.trials, o.jobs, progress)
    records = [TrialRecord.of(t) for t in completed(study)]
    chosen = recommend(records)
    truth = None
    if data.truth is not None and o.truth_trials != 0:
        from engine.tune.truth import true_optimum

        n = o.truth_trials if o.truth_trials is not None else o.trials
        truth = true_optimum(objective, tuning, current, records, chosen, n, o.seed)
    context = {
        "options": o,
        "config": config,
        "study": name,
        "estimator": est,
        "limits": limits,
        "current": current,
        "prepare_seconds": prepare_s,
        "rows": data.rows,
        "requests": data.requests,
        "model_version": data.model_version,
        "history_impressions": data.warm.impressions if data.warm is not None else 0,
        "assumptions": data.assumptions,
    }
    front = frontier(records, list(tuning.objectives))
    return write_outputs(context, records, chosen, front, truth)
