"""``admatch replay`` in process: the report, its checks and its quality figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.caps.memory_store import MemoryCapStore
from engine.caps.store import StoreUnavailable
from engine.cli import app
from engine.replay.compare import compare, load_report
from engine.replay.run import ReplayOptions, open_session, replay

runner = CliRunner()

# Keys report.json promises (docs/replay.md); a rename breaks users' scripts.
STABLE_KEYS = [
    "requests",
    "candidates",
    "throughput.requests_per_s",
    "throughput.candidates_per_s",
    "latency_ms.p50",
    "latency_ms.p95",
    "latency_ms.p99",
    "latency_ms.max",
    "floor.model_candidates_per_s",
    "floor.ratio",
    "decisions.fill_rate",
    "decisions.cap_violations",
    "decisions.no_ad_share",
    "decisions.ads_per_user_day",
    "quality.user_fit.engaged.auc",
    "quality.off_policy.engine.revenue.dr.value",
    "environment.cpu",
]


def run(model_log: Path, model_dir: Path, config: Path, out: Path, **options: object) -> dict:
    base = dict(log=model_log, report_dir=out, model_dir=model_dir, config_path=config)
    return replay(ReplayOptions(**{**base, **options}))  # type: ignore[arg-type]


def dig(doc: dict, key: str) -> object:
    for part in key.split("."):
        doc = doc[part]
    return doc


@pytest.fixture(scope="module")
def batched(
    model_log: Path, model_dir: Path, memory_config: Path, tmp_path_factory
) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("batched")
    doc = run(
        model_log, model_dir, memory_config, out, batch=16, max_requests=1500, save_decisions=True
    )
    return doc, out


def test_report_has_every_stable_key_and_file(batched: tuple[dict, Path]) -> None:
    doc, out = batched
    for key in STABLE_KEYS:
        assert dig(doc, key) is not None, key
    assert json.loads((out / "report.json").read_text())["requests"] == doc["requests"] == 1500
    for name in ("report.md", "latency.png", "throughput.png", "revenue_vs_cost.png"):
        assert (out / name).stat().st_size > 500, name
    assert "## Decisions" in (out / "report.md").read_text()


def test_decisions_are_consistent(batched: tuple[dict, Path]) -> None:
    doc, out = batched
    d = doc["decisions"]
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert len(decisions) == doc["candidates"]
    filled = decisions.group_by("request_id").agg((pl.col("rank") > 0).any())["rank"].mean()
    assert d["fill_rate"] == pytest.approx(filled)
    assert d["selected_ads"] == int((decisions["rank"] > 0).sum())
    assert d["cap_violations"] == 0  # batches never hold one user twice
    assert 1 < doc["throughput"]["mean_batch_requests"] <= 16
    no_ad = sum(d["no_ad_share"].values())
    assert no_ad == pytest.approx(1 - d["fill_rate"])
    assert set(d["ads_per_user_day"]) <= {"ai_voice", "ott", "iot", "mobile"}


def test_stage_times_add_up(batched: tuple[dict, Path]) -> None:
    doc, _ = batched
    stages = doc["stages_ms"]
    assert {"decode", "caps", "features", "model", "rank", "encode"} <= set(stages)
    total = sum(s["mean"] for s in stages.values() if s["mean"] is not None)
    assert total == pytest.approx(doc["latency_ms"]["mean"], rel=1e-6)
    f = doc["floor"]
    assert f["ratio"] == pytest.approx(
        doc["throughput"]["candidates_per_s"] / f["model_candidates_per_s"]
    )


def test_quality_against_the_truth(batched: tuple[dict, Path]) -> None:
    doc, _ = batched
    fit = doc["quality"]["user_fit"]
    assert 0.55 < fit["engaged"]["auc"] < 1 and fit["engaged"]["rows"] > 100
    ope = doc["quality"]["off_policy"]
    assert ope["available"]
    for reward in ("engagement", "revenue", "negative"):
        e = ope["engine"][reward]
        assert e["truth"] is not None
        for name in ("ips", "snips", "dr"):
            assert e[name]["low"] <= e[name]["value"] <= e[name]["high"]
            assert e[name]["error"] == pytest.approx(e[name]["value"] - e["truth"])
        logged = ope["logging"][reward]["on_policy"]
        assert logged["low"] <= logged["value"] <= logged["high"]
    # the engine shows fewer ads than the log's policy but picks them for engagement
    assert ope["engine"]["ads_per_request"] < ope["logging"]["ads_per_request"]


def test_record_logged_replays_the_logs_exposures(model_log, model_dir, memory_config, tmp_path):
    doc = run(
        model_log,
        model_dir,
        memory_config,
        tmp_path,
        record="logged",
        max_requests=400,
        plots=False,
    )
    assert doc["engine"]["record"] == "logged"
    assert doc["requests"] == 400 and doc["errors"]["total"] == 0


def test_reserve_keeps_caps_and_needs_selected(model_log, model_dir, memory_config, tmp_path):
    doc = run(
        model_log,
        model_dir,
        memory_config,
        tmp_path,
        batch=32,
        reserve=True,
        max_requests=600,
        plots=False,
    )
    assert doc["decisions"]["cap_violations"] == 0 and doc["engine"]["reserve"] is True
    assert doc["stages_ms"]["reserve"]["mean"] is not None
    from engine.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="record selected"):
        run(model_log, model_dir, memory_config, tmp_path, reserve=True, record="logged")


def test_a_log_without_propensities_says_why(model_log, model_dir, memory_config, tmp_path):
    log = tmp_path / "no_propensity.parquet"
    pl.read_parquet(model_log).drop("propensity").write_parquet(log)
    doc = run(log, model_dir, memory_config, tmp_path / "r", max_requests=1200, plots=False)
    ope = doc["quality"]["off_policy"]
    assert ope["available"] is False and "propensity" in ope["reason"]
    assert doc["quality"]["user_fit"]["engaged"]["auc"] is not None
    # every shown row of the replay is counted, not those of the first chunk (it said 256)
    head = pl.read_parquet(model_log).filter(
        pl.col("request_id").is_in(
            pl.read_parquet(model_log)["request_id"].unique(maintain_order=True)[:1200].implode()
        )
    )
    shown = int(head["shown"].sum())
    assert ope["reason"].startswith(f"{shown:,} of {shown:,} shown row(s) without a propensity")


def test_failed_requests_carry_their_messages(model_log, model_dir, memory_config, tmp_path):
    """Before: reason ERROR in decisions.parquet and a count by status, no message."""
    rows = pl.read_parquet(model_log).head(3000)
    first = rows["request_id"][0]
    ad = rows.filter(pl.col("request_id") == first)["ad_id"][0]
    bad = rows.with_columns(  # the first request names its first ad on every row
        pl.when(pl.col("request_id") == first).then(pl.lit(ad)).otherwise("ad_id").alias("ad_id")
    )
    log = tmp_path / "dup.parquet"
    bad.write_parquet(log)
    doc = run(log, model_dir, memory_config, tmp_path / "r", plots=False, save_decisions=True)
    [error] = doc["errors"]["by_message"]
    assert error["status"] == "INVALID_ARGUMENT" and error["requests"] == 1
    assert (
        error["example"] == f"candidates.items[1].ad_id: {ad!r} is given twice (first at "
        "candidates.items[0].ad_id)"
    )
    decisions = pl.read_parquet(tmp_path / "r" / "decisions.parquet")
    failed = decisions.filter(pl.col("request_id") == first)
    assert failed["reason"].unique().to_list() == ["ERROR"]
    assert failed["error"].unique().to_list() == [error["example"]]
    assert decisions.filter(pl.col("request_id") != first)["error"].null_count() == len(
        decisions
    ) - len(failed)
    assert "is given twice" in (tmp_path / "r" / "report.md").read_text()


def test_bounds(model_log, model_dir, memory_config, tmp_path):
    doc = run(model_log, model_dir, memory_config, tmp_path, duration_s=0.01, plots=False)
    assert 0 < doc["requests"] < 2000


def test_compare_two_reports(
    batched: tuple[dict, Path], model_log, model_dir, memory_config, tmp_path
):
    _, out_a = batched
    run(model_log, model_dir, memory_config, tmp_path, batch=1, max_requests=300, plots=False)
    rows = {r[0]: r for r in compare(load_report(out_a), load_report(tmp_path))}
    label, a, b, ratio, _ = rows["requests"]
    assert (a, b, ratio) == (1500, 300, pytest.approx(0.2))
    assert rows["cap violations"][4] in ("same", "")
    result = runner.invoke(app, ["replay", "compare", str(out_a), str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "requests/s" in result.output and "0.200" in result.output
    bad = runner.invoke(app, ["replay", "compare", str(out_a), str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and "no such report" in bad.output


def test_cli_replay(model_log, model_dir, memory_config, tmp_path):
    args = ["replay", "--log", str(model_log), "--report", str(tmp_path), "--model", str(model_dir)]
    args += ["--config", str(memory_config), "--max-requests", "200", "--no-plots"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cap violations" in result.output and (tmp_path / "report.json").exists()
    missing = runner.invoke(app, ["replay", "--report", str(tmp_path)])
    assert missing.exit_code == 2 and "--log: required" in missing.output
    no_model = runner.invoke(app, ["replay", "--log", str(model_log), "--report", str(tmp_path)])
    assert no_model.exit_code == 2 and "--model" in no_model.output


def test_a_failing_cap_store_is_counted_and_the_replay_goes_on(
    model_log, model_dir, memory_config, tmp_path, monkeypatch
):
    """Every third pass's cap read and every fourth event record fail as a store that does
    not answer: the replay finishes (those requests fail closed, as the config says) and
    report.json and report.md count the failed calls, and the requests decided without the
    store under their own reason (CAP_STORE_UNAVAILABLE, not FREQUENCY_CAPPED)."""
    calls = {"read": 0, "record": 0}
    read_many, record = MemoryCapStore.read_many, MemoryCapStore.record

    def flaky_read_many(self: MemoryCapStore, plans: Any, budget_s: Any = None) -> Any:
        calls["read"] += 1
        if calls["read"] % 3 == 0:
            return [StoreUnavailable("down for the test") for _ in plans]
        return read_many(self, plans, budget_s)

    def flaky_record(self: MemoryCapStore, impressions: Any) -> int:
        calls["record"] += 1
        if calls["record"] % 4 == 0:
            raise StoreUnavailable("down for the test")
        return record(self, impressions)

    monkeypatch.setattr(MemoryCapStore, "read_many", flaky_read_many)
    monkeypatch.setattr(MemoryCapStore, "record", flaky_record)
    doc = run(
        model_log, model_dir, memory_config, tmp_path, batch=16, max_requests=600, plots=False
    )
    errors = doc["errors"]
    assert doc["requests"] == 600 and errors["total"] == 0
    assert errors["cap_read_errors"] > 0 and errors["record_errors"]["UNAVAILABLE"] > 0
    assert errors["record_errors"]["UNAVAILABLE"] == calls["record"] // 4
    text = (tmp_path / "report.md").read_text()
    assert "Cap-store calls that failed" in text and "| record | UNAVAILABLE |" in text
    decisions = doc["decisions"]
    assert 0 < decisions["cap_store_unavailable_requests"] < 600
    assert decisions["no_ad_share"]["CAP_STORE_UNAVAILABLE"] > 0
    assert "without cap store" in text


def test_in_process_the_store_deadline_is_the_replays(
    model_log, model_dir, memory_config, tmp_path
):
    """A replay is not a serving call: the store's deadline is its own (5 s by default, or
    as given); ``None`` keeps the config's."""
    base = dict(log=model_log, report_dir=tmp_path, model_dir=model_dir, config_path=memory_config)
    for given, expected in ((5_000.0, 5_000.0), (120.0, 120.0), (None, 50.0)):
        session = open_session(ReplayOptions(**base, store_deadline_ms=given))
        try:
            assert session.config.store.deadline_ms == expected
        finally:
            session.engine.close()
