"""Issue 19, finding 9: a conversion model and calibrated probabilities."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.config import load_config
from engine.errors import ModelError
from engine.model.bundle import ModelBundle
from engine.model.calibrate import Calibration, fit_calibration, reliability
from engine.model.metrics import log_loss
from engine.scoring import rules as R
from engine.scoring.scorer import Scorer
from engine.scoring.types import ScoreRequest
from features.online import RequestContext


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_a_miscalibrated_model_is_mapped_back_to_its_rates() -> None:
    rng = np.random.default_rng(5)
    truth = _sigmoid(rng.normal(-2.5, 0.8, 50_000))
    y = (rng.random(len(truth)) < truth).astype(float)
    logit = np.log(truth / (1 - truth))
    raw = _sigmoid(1.6 * logit + 0.7)  # overconfident and too high
    cal = fit_calibration(raw[:25_000], y[:25_000])
    assert cal is not None
    held_raw, held_y = raw[25_000:], y[25_000:]
    assert reliability(held_y, cal(held_raw)) < reliability(held_y, held_raw) / 5
    assert log_loss(held_y, cal(held_raw)) < log_loss(held_y, held_raw)
    assert cal.a == pytest.approx(1 / 1.6, abs=0.05)
    order = np.argsort(held_raw)
    assert np.all(np.diff(cal(held_raw)[order]) >= 0)  # the ranking is kept


def test_too_little_or_one_class_fits_nothing() -> None:
    assert fit_calibration(np.full(100, 0.1), np.r_[np.zeros(90), np.ones(10)]) is None
    assert fit_calibration(np.full(1000, 0.1), np.zeros(1000)) is None


def test_the_model_reports_its_recalibration(model_dir: Path) -> None:
    meta = json.loads((model_dir / "metadata.json").read_text())
    for target, m in meta["metrics"].items():
        r = m["recalibration"]
        assert r["raw"]["log_loss"] > 0 and "reliability" in r["raw"], target
        served = r["recalibrated"] if r["adopted"] else r["raw"]
        assert m["log_loss"] == pytest.approx(served["log_loss"]), target
        assert m["log_loss"] <= r["raw"]["log_loss"], target  # adopted only when it helps
        assert (meta["targets"][target]["calibration"] is not None) == r["adopted"], target


def test_the_served_probabilities_go_through_the_calibration(
    model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["targets"]["engaged"]["calibration"] = None
    (copy / "metadata.json").write_text(json.dumps(meta))
    raw = ModelBundle.load(copy, runtime="lightgbm")
    meta["targets"]["engaged"]["calibration"] = Calibration(1.0, 1.0).to_json()
    (copy / "metadata.json").write_text(json.dumps(meta))
    shifted = ModelBundle.load(copy, runtime="lightgbm")
    x = np.zeros((3, len(raw.core.names)))
    p = raw.predict(x).engaged
    expected = _sigmoid(np.log(p / (1 - p)) + 1.0)
    assert shifted.predict(x).engaged == pytest.approx(expected)
    meta["targets"]["engaged"]["calibration"] = {"method": "platt", "a": -1, "b": 0}
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"targets.engaged.calibration: a must be a positive"):
        ModelBundle.load(copy, runtime="lightgbm")


def test_a_log_with_conversions_trains_a_conversion_model(model_dir: Path) -> None:
    """Before: CPA bids used a fixed prior whatever the log held."""
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    assert bundle.converted is not None
    assert bundle.metadata["metrics"]["converted"]["among"] == "engaged"
    assert not any("conversion" in a for a in bundle.assumptions)


def _cpa_request(model_log: Path) -> ScoreRequest:
    rows = pl.read_parquet(model_log).filter(pl.col("pricing") == "cpa").head(40)
    first = rows["request_id"][0]
    head = rows.filter(pl.col("request_id") == first).row(0, named=True)
    cands = rows.unique("ad_id", keep="first").head(5)
    columns = {
        name: cands[name].to_list()
        for name in (
            "ad_id",
            "campaign_id",
            "advertiser_id",
            "category",
            "format",
            "bid",
            "pricing",
            "duration_s",
            "creative_id",
            "suitability_tier",
        )
    }
    return ScoreRequest(RequestContext.from_row(head), columns)


def test_cpa_bids_are_valued_with_the_conversion_model(model_dir: Path, model_log: Path) -> None:
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    scorer = Scorer(bundle, load_config())
    request = _cpa_request(model_log)
    decision = scorer.score(request)
    batch = bundle.core.batch([request.context], [request.candidates], [None], also=R.INPUTS)
    predicted = bundle.predict(batch.matrix())
    assert predicted.converted is not None
    bids = np.asarray(request.candidates["bid"])
    assert decision.expected_value == pytest.approx(bids * predicted.engaged * predicted.converted)
    rows = R.Rows.from_inputs(batch.inputs)
    prior = R.expected_value(rows, predicted.engaged, 0.08)
    assert not np.allclose(decision.expected_value, prior)


def test_the_conversion_model_runs_only_for_cpa_rows(model_dir: Path) -> None:
    """P(convert | engage) matters only to CPA bids: other rows never pay for the model."""
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    calls: list[int] = []
    inner = bundle.converted
    assert inner is not None
    model = inner

    class Counting:
        name = "counting"

        def predict(self, x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return model.predict(x)

    counted = dataclasses.replace(bundle, converted=Counting())
    x = np.random.default_rng(1).random((6, len(bundle.core.names)))
    full = bundle.predict(x).converted
    assert full is not None
    cpa = np.array([True, False, False, True, False, False])
    part = counted.predict(x, convert=cpa).converted
    assert part is not None and calls == [2]
    assert part[cpa] == pytest.approx(full[cpa]) and np.isnan(part[~cpa]).all()
    counted.predict(x, convert=np.zeros(6, dtype=bool))
    assert calls == [2]
