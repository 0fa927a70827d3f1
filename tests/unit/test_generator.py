"""The synthetic world: deterministic, structurally sound, and faithful to its own truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import ConfigError
from engine.synth.generator import GeneratedLog, generate, truth_path
from engine.synth.params import WorldParams
from features.logio import read_log
from features.schema import TRUTH_COLUMNS, polars_schema


def test_same_seed_same_log_and_truth() -> None:
    a = generate(WorldParams(rows=3_000, seed=42))
    b = generate(WorldParams(rows=3_000, seed=42))
    assert a.log.equals(b.log)
    assert a.truth == b.truth


def test_other_seed_other_log() -> None:
    a = generate(WorldParams(rows=3_000, seed=1))
    b = generate(WorldParams(rows=3_000, seed=2))
    assert not a.log.equals(b.log)


@pytest.mark.parametrize("rows", [1_000, 7_777])
def test_exact_row_count_and_schema(rows: int) -> None:
    log = generate(WorldParams(rows=rows, seed=3)).log
    assert len(log) == rows
    assert log.schema == polars_schema()


def test_rows_are_in_time_order_with_ids_in_time_order(small_world: GeneratedLog) -> None:
    log = small_world.log
    assert log["ts"].is_sorted()
    assert log["request_id"].is_sorted()
    assert log.select(pl.col("ad_id").is_duplicated().over("request_id").any()).item() is False


def test_outcomes_only_for_shown_candidates(small_world: GeneratedLog) -> None:
    log = small_world.log
    unseen = log.filter(~pl.col("shown"))
    for col in ("engaged", "converted", "negative", "negative_kind", "watch_fraction"):
        assert unseen[col].null_count() == len(unseen), col
    shown = log.filter("shown")
    assert shown["engaged"].null_count() == 0
    assert (shown.filter("negative")["negative_kind"].null_count()) == 0
    assert shown.filter(~pl.col("negative"))["negative_kind"].null_count() == len(
        shown.filter(~pl.col("negative"))
    )
    timed = shown["format"].is_in(["video", "audio"])
    assert shown.filter(timed)["watch_fraction"].null_count() == 0
    assert shown.filter(~timed)["watch_fraction"].null_count() == int((~timed).sum())
    assert not shown.filter(pl.col("converted") & ~pl.col("engaged")).height


def test_uniform_policy_propensities(small_world: GeneratedLog) -> None:
    log = small_world.log
    per_request = log.group_by("request_id").agg(
        pl.len().alias("k"),
        pl.col("shown").sum().alias("shown"),
        pl.col("propensity").first().alias("p"),
        pl.col("propensity").n_unique().alias("distinct"),
        (pl.col("slot").first() == "ott_preroll").alias("pod"),
    )
    assert per_request["distinct"].max() == 1
    cap = pl.when(pl.col("pod")).then(pl.min_horizontal(2, "k")).otherwise(1)
    check = per_request.with_columns(cap.alias("m"))
    assert (check["shown"] <= check["m"]).all()
    assert ((check["shown"] == 0) | (check["shown"] == check["m"])).all()
    expected = 0.9 * check["m"] / check["k"]
    assert np.allclose(check["p"].to_numpy(), expected.to_numpy())
    empty_share = (check["shown"] == 0).cast(pl.Float64).mean()
    assert abs(empty_share - 0.1) < 4 * math.sqrt(0.09 / len(check))


def test_greedy_policy_propensities_are_probabilities() -> None:
    log = generate(WorldParams(rows=20_000, seed=9, policy="greedy", epsilon=0.2)).log
    p = log["propensity"]
    assert p.min() > 0 and p.max() <= 1
    # Under the greedy policy, shown candidates carry the higher propensities.
    assert (
        log.filter("shown")["propensity"].mean() > log.filter(~pl.col("shown"))["propensity"].mean()
    )
    # Expected number shown per request (sum of propensities) is 0.9 x capacity.
    totals = log.group_by("request_id").agg(pl.col("propensity").sum(), pl.col("slot").first())
    single = totals.filter(pl.col("slot") != "ott_preroll")["propensity"]
    assert np.allclose(single.to_numpy(), 0.9)


@pytest.mark.parametrize(
    ("outcome", "truth"), [("engaged", "true_p_engaged"), ("negative", "true_p_negative")]
)
def test_empirical_rates_match_truth_per_slot(
    medium_world: GeneratedLog, outcome: str, truth: str
) -> None:
    shown = medium_world.log.filter("shown")
    per_slot = shown.group_by("slot").agg(
        pl.col(outcome).cast(pl.Float64).sum().alias("observed"),
        pl.col(truth).sum().alias("expected"),
        (pl.col(truth) * (1 - pl.col(truth))).sum().alias("variance"),
    )
    assert len(per_slot) == 11
    z = (per_slot["observed"] - per_slot["expected"]) / per_slot["variance"].sqrt()
    assert z.abs().max() < 4.0, per_slot.with_columns(z.alias("z"))


def test_truth_has_the_promised_shape(medium_world: GeneratedLog) -> None:
    log = medium_world.log.filter("shown")
    # Fatigue: negative feedback grows with recent exposures of the user.
    from features.exposure import point_in_time_exposures

    exp = point_in_time_exposures(medium_world.log.lazy()).collect().filter("shown")
    low = exp.filter(pl.col("exp_user_any_1h") == 0)["true_p_negative"].mean()
    high = exp.filter(pl.col("exp_user_any_1h") >= 2)["true_p_negative"].mean()
    assert high > low
    # Intrusive formats on intrusive slots hurt more: audio on voice_reply vs image banners.
    by = log.group_by("slot", "format").agg(pl.col("true_p_negative").mean())
    reply = by.filter((pl.col("slot") == "voice_reply") & (pl.col("format") == "audio"))
    banner = by.filter((pl.col("slot") == "ott_home_banner") & (pl.col("format") == "image"))
    assert reply.item(0, "true_p_negative") > 2 * banner.item(0, "true_p_negative")
    # Interest raises engagement.
    interested = log.filter(pl.col("user_interests").list.contains(pl.col("category")))
    others = log.filter(~pl.col("user_interests").list.contains(pl.col("category")))
    assert interested["true_p_engaged"].mean() > 1.5 * others["true_p_engaged"].mean()


def test_daily_rhythms(medium_world: GeneratedLog) -> None:
    req = medium_world.log.unique("request_id")
    ott = req.filter(pl.col("touchpoint") == "ott")["local_hour"]
    voice = req.filter(pl.col("touchpoint") == "ai_voice")["local_hour"]
    assert ott.is_between(19, 23).mean() > 0.4
    assert voice.is_between(6, 9).mean() > ott.is_between(6, 9).mean()


def test_households_share_tv_and_speaker_users_own_phones(small_world: GeneratedLog) -> None:
    req = small_world.log.unique("request_id")
    shared = req.filter(pl.col("touchpoint").is_in(["ott", "ai_voice"]))
    per_device = shared.group_by("device_id").agg(pl.col("household_id").n_unique())
    assert per_device["household_id"].max() == 1
    users_per_tv = shared.group_by("device_id").agg(pl.col("user_id").n_unique())
    assert users_per_tv["user_id"].max() > 1
    phones = (
        req.filter(pl.col("touchpoint") == "mobile")
        .group_by("device_id")
        .agg(pl.col("user_id").n_unique())
    )
    assert phones["user_id"].max() == 1


def test_advertisers_compete_in_categories(small_world: GeneratedLog) -> None:
    per_cat = small_world.log.group_by("category").agg(pl.col("advertiser_id").n_unique())
    assert per_cat["advertiser_id"].max() >= 2


def test_bad_tables_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown touchpoint 'web'"):
        generate(WorldParams(rows=100, touchpoint_mix={"web": 1.0}))


def test_cli_writes_log_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "log.parquet"
    result = CliRunner().invoke(
        app, ["gen-logs", "--rows", "2000", "--seed", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2,000 rows" in result.output
    log = read_log(out)
    truth = json.loads(truth_path(out).read_text())
    assert truth["params"]["seed"] == 4 and truth["summary"]["rows"] == 2000
    assert set(TRUTH_COLUMNS) <= set(log.columns)
    assert set(log["ad_id"].unique()) <= {ad["ad_id"] for ad in truth["ads"]}
