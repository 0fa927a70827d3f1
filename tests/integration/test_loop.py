"""The learning loop end to end, small (issue 17): a real ``admatch serve`` logs every decision,
the synthetic world's outcomes come back as events, and ``admatch nightly`` joins, trains,
tunes and hot-reloads the server each night. The figures (regret, coverage) are the benchmark's
job (``benchmarks/closed_loop.py``, BENCHMARKS.md); this asserts the loop's plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from benchmarks.closed_loop import Setup, closed_loop
from features.logio import read_log


def test_two_days_of_the_loop_log_every_decision_and_reload_the_server(tmp_path: Path) -> None:
    setup = Setup(
        days=2,
        requests_per_day=1200,
        trials=4,
        truth_trials=4,
        explore=0.3,
        train_days=2,
        seed=11,
        max_negative=0.13,
    )
    report = closed_loop(setup, tmp_path / "loop")

    assert len(report["days"]) == 2
    assert report["requests_served"] > 0
    assert report["decisions_logged"] == report["requests_served"]
    assert report["targets"]["every served decision logged"]
    work = tmp_path / "loop" / "work" / "nightly"
    versions = []
    for day in report["days"]:
        night = json.loads((work / "nightly" / f"{day['date']}.json").read_text())
        # the server now serves what the night trained, on every worker
        assert night["reloaded"]["model_version"] == night["model"]["version"]
        assert night["reloaded"]["workers"]
        versions.append(night["model"]["version"])
        # the joined log carries the logged propensities and the outcomes the world sent back
        log = read_log(work / "logs" / f"{day['date']}.parquet")
        assert log["request_id"].n_unique() == day["decisions_logged"]
        assert log.filter(pl.col("shown"))["propensity"].is_between(0.0, 1.0).all()
        assert log["engaged"].any()
        # exploring changed some choices (share 0.3), and the log says what the serving
        # weights would have shown instead
        assert (log["current_rank"] != log["rank"]).any()
        assert log.filter(pl.col("propensity") < 1.0).height > 0
        assert day["estimate_next"] is not None
        if night["tune"]["chosen"] is not None:
            assert Path(night["config"]).exists()
    assert versions[0] != versions[1]  # each night trains on the new day
    assert report["ope_coverage"] is not None
