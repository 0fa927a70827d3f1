"""The command line: every command's help, and the commands not covered elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        "gen-logs",
        "import-log",
        "summary",
        "features",
        "quickstart",
        "train",
        "decide",
        "serve",
        "score",
        "replay",
        "replay compare",
    ],
)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_summary_and_features(model_log: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["summary", "--log", str(model_log)])
    assert result.exit_code == 0, result.output
    assert "60,000 rows" in result.output and "ott_preroll" in result.output
    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--log", str(model_log), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert len(frame) == 60_000 and "interest_affinity" in frame.columns
    assert (tmp_path / "features.parquet.stats" / "feature_stats.json").exists()


def test_features_refuse_a_log_whose_values_break_the_schema(
    model_log: Path, tmp_path: Path
) -> None:
    """As training does: a negative bid is named, and no features are written."""
    bad = tmp_path / "bad.parquet"
    log = pl.read_parquet(model_log)
    log = log.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(-1.0).otherwise(pl.col("bid")).alias("bid")
    )
    log.write_parquet(bad)
    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--log", str(bad), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "bid: 1 row(s) with values outside" in result.output
    assert not out.exists()


def test_quickstart_runs_the_main_job(tmp_path: Path) -> None:
    args = ["quickstart", "--rows", "20000", "--dir", str(tmp_path), "--no-serve"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "log.parquet").exists() and (tmp_path / "model" / "metadata.json").exists()
    assert "per slot" in result.output and "truth_auc" in result.output
    again = runner.invoke(app, args)  # made once: the second run reuses log and model
    assert again.exit_code == 0 and "using the model in" in again.output


def test_decide_prints_a_table_and_json(model_dir: Path, tmp_path: Path) -> None:
    request = GOLDEN / "exemplary" / "ott_preroll_pod.json"
    body = json.loads(request.read_text())["request"]
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    result = runner.invoke(app, ["decide", "--model", str(model_dir), "--request", str(path)])
    assert result.exit_code == 0, result.output
    assert "COMPETITIVE_SEPARATION" in result.output and "g-preroll" in result.output
    result = runner.invoke(
        app, ["decide", "--model", str(model_dir), "--request", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["request_id"] == "g-preroll" and len(doc["candidates"]) == 5


def test_decide_reports_bad_input(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "request_id": "r",
                "ts": "2026-03-03T12:00:00+00:00",
                "user_id": "u",
                "touchpoint": "ott",
                "slot": "ott_pause",
                "candidates": [],
            }
        )
    )
    result = runner.invoke(app, ["decide", "--model", str(model_dir), "--request", str(bad)])
    assert result.exit_code == 2
    assert "request.candidates: empty" in result.output
    result = runner.invoke(app, ["decide", "--model", str(tmp_path), "--request", str(bad)])
    assert result.exit_code == 2 and "metadata.json" in result.output
    for text, message in [("[1, 2]", "holds a list, not an object"), ("{", "Expecting")]:
        bad.write_text(text)
        result = runner.invoke(app, ["decide", "--model", str(model_dir), "--request", str(bad)])
        assert result.exit_code == 2 and message in result.output, result.output


def test_json_logs_are_one_object_per_line() -> None:
    import logging

    from engine.logs.jsonlog import JsonFormatter

    record = logging.LogRecord(
        "admatch.test", logging.WARNING, "f.py", 1, "store %s", ("down",), None
    )
    record.request_id = "r1"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "WARNING" and doc["message"] == "store down"
    assert doc["logger"] == "admatch.test" and doc["request_id"] == "r1" and "ts" in doc
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc_info"]


def test_quickstart_serves_with_its_decision_log(tmp_path: Path) -> None:
    """make run logs its decisions and events under the data directory (docs/loop.md)."""
    from engine.cli import _quickstart_config
    from engine.config import load_config

    config = load_config(_quickstart_config(tmp_path))
    assert config.decision_log.dir == str((tmp_path / "logs").resolve())
