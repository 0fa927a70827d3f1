"""``admatch tune``: simulation, constraints, outputs, and the proof against the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import load_config
from engine.errors import InvalidArgument
from engine.replay import capcheck
from engine.replay.collect import EXPOSURE_COLUMNS, FEEDBACK_COLUMNS
from engine.tune.counters import FamilyCounter
from engine.tune.data import TuningData, prepare
from engine.tune.evaluate import Evaluator
from engine.tune.run import TuneOptions, tune
from engine.tune.simulate import Policy, Simulator

runner = CliRunner()


@pytest.fixture(scope="module")
def data(model_log: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TuningData:
    return prepare(model_log, model_dir, load_config(), tmp_path_factory.mktemp("tune"))


def test_counter_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(-1, 5, 300)
    times = np.sort(rng.integers(0, 1000, 300))
    counter = FamilyCounter(keys, depth=64)
    for lo in range(0, 300, 30):  # blocks of 30 rows, recorded after they are read
        rows = np.arange(lo, lo + 30)
        t = times[rows]
        got = counter.count(rows, t, t - 200, inclusive=False)
        earlier = np.arange(lo)
        want = [
            (
                (keys[earlier] == keys[r]) & (times[earlier] > t[i] - 200) & (times[earlier] < t[i])
            ).sum()
            if keys[r] >= 0
            else 0
            for i, r in enumerate(rows)
        ]
        assert got.tolist() == want
        assert counter.lifetime(rows).tolist() == [
            (keys[earlier] == keys[r]).sum() if keys[r] >= 0 else 0 for r in rows
        ]
        counter.add(rows, t)


def test_simulated_picks_keep_every_cap(data: TuningData, model_log: Path) -> None:
    """The simulation's own exposures, recounted by the replay's independent checker."""
    config = load_config()
    rank = Simulator(data, config).run(Policy.from_config(config))
    log = pl.read_parquet(model_log)
    picks = log.filter(pl.Series(rank > 0)).select(EXPOSURE_COLUMNS)
    outcome = pl.col("negative_kind").is_not_null() | pl.col("converted").fill_null(False)
    feedback = log.filter(pl.Series(rank > 0) & pl.col("shown") & outcome)
    feedback = feedback.select(FEEDBACK_COLUMNS)
    assert feedback["converted"].sum() > 0  # the conversion blocks are exercised
    found = capcheck.violations(picks, picks, feedback, config.caps, 7 * 86_400)
    assert len(picks) > 1000 and found.is_empty(), found


def test_simulated_pods_count_their_own_ads_toward_caps(
    model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Every pod's candidates share one campaign: a pod takes at most one of them (the OTT
    gap "not the same campaign within 5 minutes" refuses a second in the same pod), as the
    server's pods do; the checker counts a pod's picks toward each other."""
    config = load_config()
    log = pl.read_parquet(model_log).head(20_000)
    pod = pl.col("slot").cast(pl.String) == "ott_preroll"
    shared = log.with_columns(
        campaign_id=pl.when(pod).then(pl.lit("cmp_pod")).otherwise("campaign_id")
    )
    path = tmp_path / "log.parquet"
    shared.write_parquet(path)
    data = prepare(path, model_dir, config, tmp_path / "prep")
    rank = Simulator(data, config).run(Policy.from_config(config))
    picked = shared.filter(pl.Series(rank > 0))
    pods = picked.filter(pod)
    assert pods.height > 50 and pods["request_id"].n_unique() == pods.height
    picks = picked.select(EXPOSURE_COLUMNS)
    empty = picks.clear().select("ts", "user_id", "household_id", "campaign_id", "advertiser_id")
    feedback = empty.with_columns(negative_kind=pl.lit(None, pl.String))
    found = capcheck.violations(picks, picks, feedback, config.caps, 7 * 86_400)
    assert found.is_empty(), found


def test_simulation_matches_a_replay_of_the_engine(
    data: TuningData, model_log: Path, model_dir: Path, memory_config: Path, tmp_path: Path
) -> None:
    """The simulation decides like the real engine (cap store, scorer) replaying the log;
    the models' exposure inputs are the log's in the simulation, so not all requests agree."""
    from engine.replay.run import ReplayOptions, replay

    options = ReplayOptions(
        log=model_log,
        report_dir=tmp_path,
        model_dir=model_dir,
        config_path=memory_config,
        max_requests=800,
        save_decisions=True,
        plots=False,
    )
    replay(options)
    engine = pl.read_parquet(tmp_path / "decisions.parquet")["rank"].to_numpy() > 0
    rank = Simulator(data, load_config()).run(Policy.from_config(load_config()))
    sim = rank[: len(engine)] > 0
    same = [
        (sim[lo:hi] == engine[lo:hi]).all()
        for lo, hi in zip(data.bounds[:800], data.bounds[1:801], strict=True)
    ]
    assert np.mean(same) >= 0.9, np.mean(same)


def test_evaluation_is_consistent(data: TuningData) -> None:
    config = load_config()
    rank = Simulator(data, config).run(Policy.from_config(config))
    e = Evaluator(data)(rank)
    selected = rank > 0
    assert e.ads_per_request == pytest.approx(selected.sum() / data.requests)
    assert 0 < e.fill_rate <= 1 and e.matched == int((selected & data.shown).sum())
    for reward in ("revenue", "negative", "engagement"):
        for est in ("dr", "snips", "ips"):
            x = e.estimates[reward][est]
            assert x.low <= x.value <= x.high
        assert e.truth is not None and e.truth[reward] > 0
    more = Evaluator(data)(Simulator(data, config).run(Policy(np.zeros(7), 0.0, -1.0)))
    assert more.ads_per_user_day > e.ads_per_user_day  # no cost at all: more ads


def options(model_log: Path, model_dir: Path, tmp_path: Path, **kw: object) -> TuneOptions:
    base = dict(
        log=model_log,
        model_dir=model_dir,
        out=tmp_path / "weights.toml",
        report_dir=tmp_path / "report",
        trials=16,
        truth_trials=0,
    )
    return TuneOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_proof_against_the_truth(model_log: Path, model_dir: Path, tmp_path: Path) -> None:
    """On the synthetic world: the recommendation is within 2% of the true optimum of the
    stated objective, meets the constraint, and its estimates' intervals hold the truth."""
    doc = tune(
        options(
            model_log,
            model_dir,
            tmp_path,
            trials=30,
            truth_trials=30,
            constraints={"max_negative_rate": 0.09},
        )
    )
    chosen, truth = doc["chosen"], doc["truth"]
    assert chosen["negative"]["value"] <= 0.09
    assert truth["regret_pct"] <= 2.0, truth
    assert all(truth["chosen_estimates_cover_truth"].values()), truth
    # the written config is the recommendation, and loads
    tuned = load_config(tmp_path / "weights.toml")
    assert tuned.scoring.cost_to_money == pytest.approx(chosen["params"]["cost_to_money"])
    assert tuned.scoring.weights.fatigue == pytest.approx(chosen["params"]["weights.fatigue"])
    assert tuned.version == chosen["config_version"] and tuned.caps == load_config().caps
    report = tmp_path / "report"
    assert (
        json.loads((report / "report.json").read_text())["truth"]["regret_pct"]
        == truth["regret_pct"]
    )
    assert "regret" in (report / "report.md").read_text()
    assert (report / "frontier.png").stat().st_size > 1000
    front = doc["frontier"]
    revenue = [f["objectives"]["revenue"] for f in front]
    negative = [f["negative"]["value"] for f in front]
    assert revenue == sorted(revenue) and negative == sorted(negative)  # a true trade-off


def test_constraints_are_honoured(model_log: Path, model_dir: Path, tmp_path: Path) -> None:
    doc = tune(
        options(
            model_log,
            model_dir,
            tmp_path,
            constraints={"max_ads_per_household_day": {"ott": 6}, "min_revenue_pct": 50.0},
        )
    )
    chosen = doc["chosen"]
    assert chosen["household_day"]["ott"]["max"] <= 6
    assert chosen["revenue"]["value"] >= 0.5 * doc["current"]["revenue"]["value"]
    assert doc["constraints"]["max_ads_per_household_day"] == {"ott": 6}


def test_a_negative_bound_can_be_judged_with_a_margin(
    model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    """With ``negative_z`` the recommendation's negative-feedback estimate plus z standard
    errors is under the bound, not only its point estimate: a tuner that picks the most
    revenue lands at the bound otherwise, and breaks it by the truth about half the time."""
    bound = 0.09
    point = tune(
        options(model_log, model_dir, tmp_path / "p", constraints={"max_negative_rate": bound})
    )
    careful = tune(
        options(
            model_log,
            model_dir,
            tmp_path / "z",
            constraints={"max_negative_rate": bound, "negative_z": 2.0},
        )
    )
    neg = careful["chosen"]["negative"]
    assert neg["value"] + 2.0 * neg["stderr"] <= bound
    assert careful["constraints"]["negative_z"] == 2.0
    assert point["chosen"]["negative"]["value"] <= bound


def test_deterministic_for_a_seed(model_log: Path, model_dir: Path, tmp_path: Path) -> None:
    a = tune(options(model_log, model_dir, tmp_path / "a", trials=14, seed=3))
    b = tune(options(model_log, model_dir, tmp_path / "b", trials=14, seed=3))
    assert a["chosen"]["params"] == b["chosen"]["params"]
    assert [f["trial"] for f in a["frontier"]] == [f["trial"] for f in b["frontier"]]


def test_resumes_and_runs_parallel_workers(
    model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Two processes share one study (journal file); a second run resumes it."""
    tune(options(model_log, model_dir, tmp_path, trials=14, jobs=2, study="s"))
    doc = tune(options(model_log, model_dir, tmp_path, trials=18, study="s"))
    assert doc["trials"] == 18
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "report" / "study.journal"))
    )
    trials = optuna.load_study(study_name="s", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 18
    assert len({t.user_attrs["worker"] for t in complete[:14]}) == 2  # both processes ran


def test_a_log_without_propensities(model_log: Path, model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "no_propensity.parquet"
    pl.read_parquet(model_log).drop("propensity").write_parquet(log)
    with pytest.raises(InvalidArgument) as err:
        tune(options(log, model_dir, tmp_path))
    assert err.value.field == "propensity"
    assert "doubly robust" in err.value.problem and "--direct-method" in err.value.problem
    doc = tune(options(log, model_dir, tmp_path / "dm", trials=10, direct_method=True))
    assert doc["estimator"] == "dm" and doc["chosen"] is not None


def test_cli(model_log: Path, model_dir: Path, tmp_path: Path) -> None:
    args = ["tune", "--log", str(model_log), "--model", str(model_dir), "--out"]
    args += [str(tmp_path / "w.toml"), "--report", str(tmp_path / "r"), "--trials", "10"]
    result = runner.invoke(
        app, [*args, "--truth-trials", "0", "--max-ads-per-household-day", "ott=5"]
    )
    assert result.exit_code == 0, result.output
    assert "recommended trial" in result.output and (tmp_path / "w.toml").exists()
    bad = runner.invoke(app, [*args, "--max-ads-per-household-day", "ott"])
    assert bad.exit_code == 2 and "TOUCHPOINT=K" in bad.output
    bad = runner.invoke(app, [*args, "--storage", "redis://x"])
    assert bad.exit_code == 2 and "--storage" in bad.output


def test_a_policy_without_evidence_or_ads_is_never_recommended(
    model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Seen on a real log: with the direct method (no propensities) every trial counted as
    trusted with 0 matched events, and the tuner recommended, and wrote, a config that never
    shows an ad. A recommendation must rest on min_matched_events matched events and show ads,
    unless the config says otherwise."""
    log = tmp_path / "no_propensity.parquet"
    pl.read_parquet(model_log).drop("propensity").write_parquet(log)
    config = tmp_path / "never.toml"
    text = (Path(__file__).resolve().parents[2] / "engine" / "default_config.toml").read_text()
    never = text.replace("reserve = [0.0, 0.02]", "reserve = [1000.0, 2000.0]")
    config.write_text(never.replace("reserve = 0.0 ", "reserve = 1500.0 ", 1))
    out = tmp_path / "never_weights.toml"
    doc = tune(
        options(
            log,
            model_dir,
            tmp_path / "r1",
            trials=6,
            direct_method=True,
            config_path=config,
            out=out,
        )
    )
    assert doc["chosen"] is None and not out.exists()
    assert "no config written" in doc["note"] and doc["frontier"] == []  # all flagged
    allowed = config.read_text().replace("require_fill = true", "require_fill = false")
    config.write_text(allowed.replace("min_matched_events = 100", "min_matched_events = 0"))
    doc = tune(
        options(
            log,
            model_dir,
            tmp_path / "r2",
            trials=6,
            direct_method=True,
            config_path=config,
            out=out,
        )
    )
    assert doc["chosen"] is not None and out.exists()  # asked for: allowed


def test_trials_start_from_the_history_of_earlier_logs(
    model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A day tuned with its earlier days (``history``) keeps every cap counting the earlier
    days' impressions too, as the live cap store does; tuned alone it breaks some of them."""
    config = load_config()
    log = pl.read_parquet(model_log)
    cut = log["ts"].sort()[len(log) // 2]
    ids = log.filter(pl.col("ts") < cut).select("request_id").unique()
    earlier = log.join(ids, on="request_id", how="semi")
    day = log.join(ids, on="request_id", how="anti")
    earlier.write_parquet(tmp_path / "earlier.parquet")
    day.write_parquet(tmp_path / "day.parquet")
    shown = earlier.filter("shown")
    outcome = pl.col("negative_kind").is_not_null() | pl.col("converted").fill_null(False)

    def broken(history: tuple[Path, ...]) -> tuple[int, pl.DataFrame]:
        data = prepare(tmp_path / "day.parquet", model_dir, config, tmp_path / "w", history)
        rank = Simulator(data, config).run(Policy.from_config(config))
        picks = day.filter(pl.Series(rank > 0)).select(EXPOSURE_COLUMNS)
        before = shown.select(EXPOSURE_COLUMNS)
        feedback = pl.concat(
            [
                shown.filter(outcome),
                day.filter(pl.Series(rank > 0) & pl.col("shown") & outcome),
            ]
        ).select(FEEDBACK_COLUMNS)
        everything = pl.concat([before, picks])
        found = capcheck.violations(picks, everything, feedback, config.caps, 7 * 86_400)
        return (data.warm.impressions if data.warm else 0), found

    warmed, found = broken((tmp_path / "earlier.parquet",))
    assert warmed == shown.height > 1000
    assert found.is_empty(), found
    cold, found = broken(())
    assert cold == 0 and found.height > 0
