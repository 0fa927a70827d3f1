"""Issue 19, finding 6: train says which models it trained and which not, a constant target is
an error unless asked, and what comes after states what it assumes for a missing model."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import InvalidArgument
from engine.model.bundle import ModelBundle
from engine.model.train import TrainParams, train
from engine.tune.run import tune

from .test_tune import options

QUICK = TrainParams(seed=1, threads=1, compile=False, max_rounds=30)


@pytest.fixture(scope="module")
def logs(model_log: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = pl.read_parquet(model_log)
    out = tmp_path_factory.mktemp("logs")
    shown = pl.col("shown")
    variants = {
        "all_clicks": base.with_columns(pl.when(shown).then(True).alias("engaged")),
        "no_negative": base.with_columns(
            pl.lit(None, dtype=pl.Boolean).alias("negative"),
            pl.lit(None).cast(base.schema["negative_kind"]).alias("negative_kind"),
        ),
    }
    paths = {}
    for name, frame in variants.items():
        paths[name] = out / f"{name}.parquet"
        frame.write_parquet(paths[name])
    return paths


def test_a_constant_target_is_an_error_unless_asked(logs: dict[str, Path], tmp_path: Path) -> None:
    """Before: every row a click trained 1 tree with an AUC of nan, and said nothing."""
    with pytest.raises(InvalidArgument) as info:
        train(logs["all_clicks"], tmp_path / "m", QUICK)
    assert info.value.field == "engaged"
    assert "is True: there is nothing to learn" in info.value.problem
    assert "--allow-constant" in info.value.problem
    meta = train(
        logs["all_clicks"], tmp_path / "m", QUICK.model_copy(update={"allow_constant": True})
    )
    assert "engaged" in meta["metrics"]


def test_train_says_which_models_it_could_not_train(logs: dict[str, Path], tmp_path: Path) -> None:
    """Before: a log without negative feedback trained no negative model and said nothing."""
    out = tmp_path / "m"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--log",
            str(logs["no_negative"]),
            "--out",
            str(out),
            "--no-compile",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "not trained: negative: no negative outcomes on the log's shown rows" in result.output
    assert "predicted negative feedback counts as 0 in the experience cost" in result.output
    bundle = ModelBundle.load(out)
    assert bundle.negative is None
    [assumption] = bundle.assumptions
    assert assumption.startswith("no negative-feedback model (no negative outcomes")


def test_tuning_on_a_log_without_negative_feedback_says_what_it_assumes(
    logs: dict[str, Path], model_dir: Path, tmp_path: Path
) -> None:
    """Before: the tuner set max_negative_per_request = 0.0 (a bound relative to an outcome
    the log never recorded) without a word."""
    doc = tune(options(logs["no_negative"], model_dir, tmp_path, trials=4, plots=False))
    assert doc["constraints"]["max_negative_per_request"] is None
    assert any("records no negative feedback" in a for a in doc["assumptions"])
    assert (
        "Assumed: the log records no negative feedback"
        in (tmp_path / "report" / "report.md").read_text()
    )
