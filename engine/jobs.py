"""Batch jobs behind the CLI: build features for a log. Plain functions, no printing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import EngagementStats, FeatureCore, FeatureParams, Priors
from features.logio import read_log


@dataclass(frozen=True)
class FeatureJob:
    """Result of :func:`build_features`."""

    rows: int
    features: int
    seconds: float
    out: Path
    stats_dir: Path

    @property
    def rows_per_s(self) -> float:
        """Throughput of the whole job (read, compute, write)."""
        return self.rows / self.seconds if self.seconds else 0.0


def build_features(log_path: Path, out: Path, stats_dir: Path | None = None) -> FeatureJob:
    """Compute every registered feature over a log, offline, and write them as Parquet.

    Args:
        log_path: a log in the schema.
        out: output Parquet: the log's key and label columns plus one column per feature.
        stats_dir: where fitted statistics are read from (``feature_stats.json``); when
            ``None``, they are fitted on this log and saved to ``<out>.stats/``.

    Raises:
        LogSchemaError: the log breaks the schema, its values included (as ``train``): nothing
            is written.
    """
    start = time.perf_counter()
    log = read_log(log_path).lazy()  # its values checked too, as training checks them
    if stats_dir is None:
        stats = EngagementStats.fit(log)
        stats_dir = out.with_name(out.name + ".stats")
        stats_dir.mkdir(parents=True, exist_ok=True)
        stats.save(stats_dir)
    else:
        stats = EngagementStats.load(stats_dir)
    core = FeatureCore(FeatureParams(stats, _priors(stats_dir)))
    keys = ["request_id", "ts", "ad_id", "shown", "propensity", "engaged", "negative"]
    frame = core.offline(log).select(*keys, *core.names).collect()
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out, compression="zstd")
    return FeatureJob(len(frame), len(core.names), time.perf_counter() - start, out, stats_dir)


def _priors(directory: Path) -> Priors:
    """The priors a model directory's features used (its taxonomy, say), else the shipped ones.

    Raises:
        ConfigError: the directory's priors.json is not a priors document.
    """
    path = directory / "priors.json"
    if not path.exists():
        return Priors.default()
    return Priors.from_dict(json.loads(path.read_text()), str(path))


def feature_overview(path: Path) -> pl.DataFrame:
    """Per feature: dtype, null share, mean, min and max (for printing)."""
    frame = pl.read_parquet(path)
    names = [
        c
        for c in frame.columns
        if c not in ("request_id", "ts", "ad_id", "shown", "propensity", "engaged", "negative")
    ]
    rows = []
    for name in names:
        col = frame[name].cast(pl.Float64)
        rows.append(
            {
                "feature": name,
                "dtype": str(frame[name].dtype),
                "null_share": col.null_count() / max(len(col), 1),
                "mean": col.mean(),
                "min": col.min(),
                "max": col.max(),
            }
        )
    return pl.DataFrame(rows)
