"""Training data from a log: a time-based split and feature matrices from the feature core.

The validation window is ``[t_valid, last ts]`` where ``t_valid`` is the ``1 - valid_share``
quantile of impression times; it is touched only to report metrics. The shown rows before it,
in time order, are cut by position into ``folds`` blocks (so logs with few distinct times, like
the iPinYou sample's one per day, still split); the last block is kept for early stopping, the
others are fitted on.

Engagement statistics (smoothed rates per ad, campaign, advertiser, category x slot) are target
encodings, so a row must never see its own outcome through them: each block's features use
statistics fitted on the other blocks (out-of-fold). The statistics saved for serving, and used
for the validation rows, are fitted on everything before validation, so serving-time features
rest on about as much history as training-time ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from engine.errors import InvalidArgument
from features import EngagementStats, FeatureCore, FeatureParams, Priors
from features.exposure import point_in_time_exposures
from features.logio import conform

TARGETS = ("engaged", "negative", "converted")
# A target modelled among the rows where another outcome is true: P(converted | engaged), as
# conversions follow engagements (and CPA bids pay per conversion of an engagement).
AMONG = {"converted": "engaged"}


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)``, UTC."""

    start: datetime
    end: datetime

    def to_json(self) -> dict[str, int | str]:
        """Epoch microseconds (for tools) and ISO strings (for people)."""
        return {
            "start_ts": _us(self.start),
            "end_ts": _us(self.end),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }


def _us(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000 + ts.microsecond


@dataclass(frozen=True)
class Part:
    """Feature matrix and labels of one part of the split (shown rows with an engagement
    outcome). A label is NaN on a row its target does not cover (its outcome unknown, or
    outside the rows it is modelled among: see :data:`AMONG`)."""

    x: np.ndarray
    labels: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    window: Window

    def covered(self, target: str) -> np.ndarray:
        """Rows with a label of ``target``."""
        return ~np.isnan(self.labels[target])

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TrainingData:
    """Everything training needs, plus the statistics to save for serving."""

    fit: Part
    early_stop: Part
    validation: Part
    stats_window: Window
    serving_stats: EngagementStats
    names: list[str]
    categorical: list[str]
    targets: list[str]
    not_trained: dict[str, str]  # target -> why no model of it is trained


def _validation_start(rows: pl.DataFrame, folds: int, valid_share: float) -> datetime:
    """First time of the validation window: a quantile of impression times."""
    shown_ts = rows.filter(pl.col("shown"))["ts"]
    if len(shown_ts) < 100 * folds:
        raise InvalidArgument(
            "log", f"{len(shown_ts)} shown rows; training needs at least {100 * folds}"
        )
    start: datetime = shown_ts.quantile(1 - valid_share, interpolation="higher")  # type: ignore[assignment]
    if start <= shown_ts.min():  # type: ignore[operator]
        raise InvalidArgument("ts", "training needs impressions at two or more distinct times")
    return start


def label(target: str) -> pl.Expr:
    """A target's label: its outcome as 0/1, null where the target does not cover a row."""
    value = pl.col(target).cast(pl.Float64)
    if target in AMONG:
        return pl.when(pl.col(AMONG[target])).then(value)
    return value


def _truth(target: str) -> pl.Expr:
    """The generator's probability of a target's label (synthetic logs)."""
    if target in AMONG:
        return pl.col(f"true_p_{target}") / pl.col(f"true_p_{AMONG[target]}")
    return pl.col(f"true_p_{target}")


def _part(frame: pl.DataFrame, core: FeatureCore, targets: list[str]) -> Part:
    """Features, labels and truth of shown rows (which carry the exposure columns)."""
    rows = (
        frame.lazy()
        .with_columns(core.expressions())
        .filter(pl.col("engaged").is_not_null())
        .collect()
    )
    labels = {t: rows.select(label(t)).to_series().fill_null(np.nan).to_numpy() for t in targets}
    truth = {
        t: rows.select(_truth(t)).to_series().to_numpy()
        for t in targets
        if len(rows) and rows[f"true_p_{t}"].null_count() == 0
    }
    window = Window(frame["ts"].min(), frame["ts"].max())  # type: ignore[arg-type]
    return Part(core.offline_matrix(rows), labels, truth, window)


def _concat(parts: list[Part]) -> Part:
    return Part(
        np.concatenate([p.x for p in parts]),
        {t: np.concatenate([p.labels[t] for p in parts]) for t in parts[0].labels},
        {t: np.concatenate([p.truth[t] for p in parts]) for t in parts[0].truth},
        Window(parts[0].window.start, parts[-1].window.end),
    )


def choose_targets(
    shown: pl.DataFrame, allow_constant: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The targets a log's shown rows can train, and why each other one cannot.

    A target without outcomes is left out (engagement is required); a constant one (every
    known outcome the same: nothing to learn, an AUC of nan) is an error unless
    ``allow_constant``, which trains it as its constant rate.

    Raises:
        InvalidArgument: no engagement outcomes, or a constant target (naming it).
    """
    targets, not_trained = [], {}
    for t in TARGETS:
        known = shown.select(label(t)).to_series().drop_nulls()
        if known.is_empty():
            among = f" among its {AMONG[t]} rows" if t in AMONG else ""
            not_trained[t] = f"no {t} outcomes on the log's shown rows{among}"
            continue
        if known.n_unique() == 1 and not allow_constant:
            raise InvalidArgument(
                t,
                f"every one of the {len(known):,} shown rows with an outcome is "
                f"{bool(known[0])}: "
                "there is nothing to learn (a model of it would predict one rate). Map the "
                f"column from the outcome it should hold, or leave it out of the log; "
                "--allow-constant trains it anyway",
            )
        targets.append(t)
    if "engaged" not in targets:
        raise InvalidArgument("engaged", "the log has no engagement outcomes on shown rows")
    return targets, not_trained


def build(
    log: pl.DataFrame,
    priors: Priors,
    folds: int = 5,
    valid_share: float = 0.2,
    allow_constant: bool = False,
) -> TrainingData:
    """Split a log in time and compute the feature matrices of its shown rows.

    Raises:
        InvalidArgument: the log has too few shown rows, no ``engaged`` outcomes, or a
            constant target (see :func:`choose_targets`).
    """
    rows = point_in_time_exposures(conform(log.lazy())).collect()
    shown = rows.filter(pl.col("shown"))
    targets, not_trained = choose_targets(shown, allow_constant)
    t_valid = _validation_start(rows, folds, valid_share)
    before = rows.filter(pl.col("ts") < t_valid)
    shown_before = before.filter(pl.col("shown")).with_columns(
        (pl.int_range(pl.len()) * folds // pl.len()).alias("__fold")
    )
    parts = []
    for k in range(folds):
        inside = pl.col("__fold") == k
        core = FeatureCore(FeatureParams(EngagementStats.fit(shown_before.filter(~inside)), priors))
        parts.append(_part(shown_before.filter(inside).drop("__fold"), core, targets))
    serving_stats = EngagementStats.fit(before)
    serving_core = FeatureCore(FeatureParams(serving_stats, priors))
    validation = rows.filter((pl.col("ts") >= t_valid) & pl.col("shown"))
    return TrainingData(
        fit=_concat(parts[:-1]),
        early_stop=parts[-1],
        validation=_part(validation, serving_core, targets),
        stats_window=Window(before["ts"].min(), t_valid),  # type: ignore[arg-type]
        serving_stats=serving_stats,
        names=serving_core.names,
        categorical=serving_core.categorical,
        targets=targets,
        not_trained=not_trained,
    )
