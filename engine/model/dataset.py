"""Training data from a log: a time-based split and feature matrices from the feature core.

The shown rows before the validation window are cut in time into ``folds`` blocks; the last block
is kept for early stopping, the others are fitted on. The validation window (the latest
``valid_share`` of impressions) is touched only to report metrics.

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

TARGETS = ("engaged", "negative")


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
    """Feature matrix and labels of one part of the split (shown rows only)."""

    x: np.ndarray
    labels: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    window: Window

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


def _cuts(rows: pl.DataFrame, folds: int, valid_share: float) -> list[datetime]:
    """Fold boundaries and the validation start, as quantiles of impression times."""
    shown_ts = rows.filter(pl.col("shown"))["ts"]
    if len(shown_ts) < 100 * folds:
        raise InvalidArgument(
            "log", f"{len(shown_ts)} shown rows; training needs at least {100 * folds}"
        )
    qs = [(1 - valid_share) * k / folds for k in range(folds + 1)]
    return [shown_ts.quantile(q, interpolation="lower") for q in qs]  # type: ignore[misc]


def _part(
    rows: pl.DataFrame, core: FeatureCore, window: Window, targets: list[str], last: bool
) -> Part:
    in_window = (pl.col("ts") >= window.start) & (
        (pl.col("ts") <= window.end) if last else (pl.col("ts") < window.end)
    )
    part = rows.lazy().filter(in_window & pl.col("shown")).with_columns(core.expressions())
    for t in targets:
        part = part.filter(pl.col(t).is_not_null())
    frame = part.collect()
    labels = {t: frame[t].cast(pl.Float64).to_numpy() for t in targets}
    truth = {
        t: frame[f"true_p_{t}"].to_numpy()
        for t in targets
        if len(frame) and frame[f"true_p_{t}"].null_count() == 0
    }
    return Part(core.offline_matrix(frame), labels, truth, window)


def _concat(parts: list[Part]) -> Part:
    return Part(
        np.concatenate([p.x for p in parts]),
        {t: np.concatenate([p.labels[t] for p in parts]) for t in parts[0].labels},
        {t: np.concatenate([p.truth[t] for p in parts]) for t in parts[0].truth},
        Window(parts[0].window.start, parts[-1].window.end),
    )


def build(
    log: pl.DataFrame, priors: Priors, folds: int = 5, valid_share: float = 0.2
) -> TrainingData:
    """Split a log in time and compute the feature matrices of its shown rows.

    Raises:
        InvalidArgument: the log has too few shown rows, or no ``engaged`` outcomes.
    """
    rows = point_in_time_exposures(conform(log.lazy())).collect()
    shown = rows.filter(pl.col("shown"))
    targets = [t for t in TARGETS if shown[t].null_count() < len(shown)]
    if "engaged" not in targets:
        raise InvalidArgument("engaged", "the log has no engagement outcomes on shown rows")
    cuts = _cuts(rows, folds, valid_share)
    t_valid = cuts[-1]
    before = rows.filter(pl.col("ts") < t_valid)
    parts = []
    for k in range(folds):
        window = Window(cuts[k], cuts[k + 1])
        outside = before.filter((pl.col("ts") < window.start) | (pl.col("ts") >= window.end))
        core = FeatureCore(FeatureParams(EngagementStats.fit(outside), priors))
        parts.append(_part(rows, core, window, targets, last=False))
    serving_stats = EngagementStats.fit(before)
    serving_core = FeatureCore(FeatureParams(serving_stats, priors))
    end: datetime = rows["ts"].max()  # type: ignore[assignment]
    return TrainingData(
        fit=_concat(parts[:-1]),
        early_stop=parts[-1],
        validation=_part(rows, serving_core, Window(t_valid, end), targets, last=True),
        stats_window=Window(cuts[0], t_valid),
        serving_stats=serving_stats,
        names=serving_core.names,
        categorical=serving_core.categorical,
        targets=targets,
    )
