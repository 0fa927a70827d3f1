"""Two worker processes share one tuning study in PostgreSQL (optuna's RDB storage)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from engine.tune.run import TuneOptions, tune

SERVER = "postgresql://127.0.0.1:5432"


@pytest.fixture
def database() -> Iterator[str]:
    """A database of the test's own on the local server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{SERVER}/test", autocommit=True, connect_timeout=2)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432: the shared-storage test is not run")
    name = f"admatch_tune_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def test_two_workers_share_a_study(
    database: str, model_log: Path, model_dir: Path, tmp_path: Path
) -> None:
    options = TuneOptions(
        log=model_log,
        model_dir=model_dir,
        out=tmp_path / "weights.toml",
        report_dir=tmp_path / "report",
        trials=12,
        jobs=2,
        storage=database,
        study="shared",
        truth_trials=0,
    )
    doc = tune(options)
    # each process checks the count after its trial: the study may end one trial per extra
    # process above the target
    assert 12 <= doc["trials"] <= 13 and doc["chosen"] is not None
    url = "postgresql+psycopg://" + database.split("://", 1)[1]
    study = optuna.load_study(study_name="shared", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == doc["trials"]
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both processes ran trials
    # another machine joining the same study later resumes it
    again = tune(TuneOptions(**{**options.__dict__, "trials": 15, "jobs": 1}))
    assert again["trials"] == 15
