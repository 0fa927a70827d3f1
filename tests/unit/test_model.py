"""Training and loading models: metadata, determinism, refusal of bad models, compiled trees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import InvalidArgument, ModelError
from engine.model.bundle import ModelBundle
from engine.model.metrics import auc, calibration, log_loss
from engine.model.runtime import compiler_available, load_predictor
from engine.model.train import TrainParams, train
from features.logio import read_log


def test_metrics_on_hand_computed_cases() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    assert auc(y, s) == pytest.approx(6 / 9)  # counted by hand, ties count one half
    assert np.isnan(auc(np.zeros(3), np.arange(3.0)))
    assert log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    cal = calibration(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]), bins=2)
    assert cal == [
        {"n": 2.0, "mean_p": pytest.approx(0.15), "observed": 0.5},
        {"n": 2.0, "mean_p": pytest.approx(0.35), "observed": 0.5},
    ]


def test_metadata_has_the_promised_keys(model_dir: Path) -> None:
    meta = json.loads((model_dir / "metadata.json").read_text())
    for target in ("engaged", "negative"):
        m = meta["metrics"][target]
        assert 0.5 < m["auc"] < 1 and m["log_loss"] > 0 and len(m["calibration"]) == 10
        assert m["truth_auc"] > 0.5
    assert isinstance(meta["validation"]["start_ts"], int)
    assert meta["validation"]["start_ts"] < meta["validation"]["end_ts"]
    assert meta["window"]["fit"]["end_ts"] <= meta["window"]["early_stopping"]["start_ts"]
    assert meta["window"]["early_stopping"]["end_ts"] <= meta["validation"]["start_ts"]
    assert [f["name"] for f in meta["features"]] == ModelBundle.load(model_dir).core.names
    assert meta["training"]["params"]["seed"] == 3


def test_targets_with_enough_outcomes_are_fitted_again_with_the_early_stopping_block(
    model_dir: Path, model_log: Path, tmp_path: Path
) -> None:
    """Early stopping finds the rounds; a target whose early-stopping block holds at least
    ``refit_min_outcomes`` of its rarer outcome is fitted again on the fitting and
    early-stopping blocks together, for those rounds, and that booster is served;
    ``metadata.json`` says which and why."""
    import lightgbm as lgb

    meta = json.loads((model_dir / "metadata.json").read_text())
    for target, m in meta["metrics"].items():  # the small log: too few outcomes for a refit
        assert m["refit"]["done"] is False, target
        assert 0 <= m["refit"]["early_stopping_rarer_outcomes"] < 1000
        assert m["trees"] == m["best_iteration"]
    params = TrainParams(seed=3, threads=1, compile=False, max_rounds=300, refit_min_outcomes=0)
    refit = train(model_log, tmp_path / "refit", params)
    for target, m in refit["metrics"].items():
        before = meta["metrics"][target]
        assert m["refit"]["done"] is True
        assert m["best_iteration"] == before["best_iteration"]  # the same early stopping
        assert m["trees"] == m["best_iteration"]
        saved = lgb.Booster(model_file=str(tmp_path / "refit" / f"{target}.txt"))
        assert saved.num_trees() == m["trees"]
    engaged = refit["metrics"]["engaged"]["auc"]
    assert engaged != meta["metrics"]["engaged"]["auc"]  # other trees, other scores
    skipped = train(model_log, tmp_path / "off", params.model_copy(update={"refit": False}))
    assert skipped["metrics"]["engaged"]["auc"] == meta["metrics"]["engaged"]["auc"]


def test_validation_auc_can_be_recomputed_from_metadata(model_dir: Path, model_log: Path) -> None:
    """Another tool can rebuild the validation rows from the recorded window."""
    meta = json.loads((model_dir / "metadata.json").read_text())
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    rows = bundle.core.offline(read_log(model_log)).collect()
    start = meta["validation"]["start_ts"]
    end = meta["validation"]["end_ts"]
    us = pl.col("ts").dt.epoch("us")
    valid = rows.filter((us >= start) & (us <= end) & pl.col("shown"))
    p = bundle.predict(bundle.core.offline_matrix(valid)).engaged
    assert len(valid) == meta["metrics"]["engaged"]["rows"]
    assert auc(valid["engaged"].to_numpy(), p) == pytest.approx(meta["metrics"]["engaged"]["auc"])


def test_same_seed_same_model(model_log: Path, tmp_path: Path, model_dir: Path) -> None:
    train(model_log, tmp_path, TrainParams(seed=3, threads=1, compile=False, max_rounds=300))
    for name in ("engaged.txt", "negative.txt", "feature_stats.json"):
        assert (tmp_path / name).read_bytes() == (model_dir / name).read_bytes(), name


def corrupt(model_dir: Path, tmp_path: Path, how: str) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    meta_path = target / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if how == "metadata-not-json":
        meta_path.write_text("{oops")
    elif how == "feature-renamed":
        meta["features"][0]["name"] = "touchpoint_id"
        meta_path.write_text(json.dumps(meta))
    elif how == "feature-dtype":
        meta["features"][-1]["dtype"] = "Int64"
        meta_path.write_text(json.dumps(meta))
    elif how == "model-edited":
        with (target / "engaged.txt").open("a") as f:
            f.write("\n")
    elif how == "model-missing":
        (target / "negative.txt").unlink()
    elif how == "rolling-24h":  # trained before the 24h and 7d exposures went by hours, days
        for record in meta["features"]:
            record.pop("definition", None)
        meta_path.write_text(json.dumps(meta))
    elif how == "format-version":
        meta["format_version"] = 99
        meta_path.write_text(json.dumps(meta))
    elif how == "stats-missing":
        (target / "feature_stats.json").unlink()
    return target


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("metadata-not-json", "metadata.json: unreadable"),
        ("feature-renamed", "feature list does not match the running core"),
        ("feature-dtype", "feature 50 is"),
        ("rolling-24h", "exp_user_campaign_24h.*'definition': '24h by UTC hours'"),
        ("model-edited", "model file changed since training"),
        ("model-missing", "negative.txt: model file missing"),
        ("format-version", "format_version 99"),
        ("stats-missing", "unreadable feature statistics"),
    ],
)
def test_bad_models_are_refused(model_dir: Path, tmp_path: Path, how: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelBundle.load(corrupt(model_dir, tmp_path, how))


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model directory"):
        ModelBundle.load(tmp_path / "nothing")


def test_unknown_runtime(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown runtime 'onnx'"):
        load_predictor("onnx", model_dir / "engaged.txt", None)


def test_log_without_outcomes_cannot_train(model_log: Path, tmp_path: Path) -> None:
    log = read_log(model_log).with_columns(pl.lit(None, dtype=pl.Boolean).alias("engaged"))
    path = tmp_path / "no_outcomes.parquet"
    log.write_parquet(path)
    with pytest.raises(InvalidArgument, match="engaged: the log has no engagement outcomes"):
        train(path, tmp_path / "m", TrainParams(compile=False))


@pytest.mark.skipif(not compiler_available(), reason="lleaves/llvmlite not importable here")
def test_compiled_trees_predict_like_lightgbm(model_log: Path, tmp_path: Path) -> None:
    params = TrainParams(seed=1, threads=1, compile=True, max_rounds=60, num_leaves=7)
    meta = train(model_log, tmp_path, params)
    assert meta["targets"]["engaged"]["compiled"] == "compiled/engaged.so"
    compiled = ModelBundle.load(tmp_path, runtime="lleaves")
    plain = ModelBundle.load(tmp_path, runtime="lightgbm")
    assert compiled.runtime == "lleaves" and plain.runtime == "lightgbm"
    assert ModelBundle.load(tmp_path).runtime == "lleaves"  # auto prefers the compiled trees
    rows = compiled.core.offline(read_log(model_log).head(3000)).collect()
    x = compiled.core.offline_matrix(rows)
    for a, b in zip(compiled.predict(x), plain.predict(x), strict=True):
        assert a is not None and b is not None
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_auto_runtime_falls_back_without_compiled_file(model_dir: Path) -> None:
    assert ModelBundle.load(model_dir).runtime == "lightgbm"
    with pytest.raises(ModelError, match="lleaves needs a compiled model"):
        ModelBundle.load(model_dir, runtime="lleaves")


def test_cli_train_prints_metrics(model_log: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--log",
            str(model_log),
            "--out",
            str(tmp_path),
            "--no-compile",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "engaged" in result.output and "truth_auc" in result.output
    assert (tmp_path / "metadata.json").exists()


def test_quickstart_trains_again_over_a_model_that_no_longer_loads(
    model_dir: Path, tmp_path: Path
) -> None:
    """``make run`` keeps its model between runs; one trained on other feature definitions
    (or broken) is trained again, not served."""
    from engine.cli import _stale_model

    assert _stale_model(model_dir) == ""
    assert "feature list does not match" in _stale_model(
        corrupt(model_dir, tmp_path, "rolling-24h")
    )
