"""Shared fixtures: small generated worlds (session-scoped, fixed seeds) and the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.scoring.scorer import Scorer
from engine.synth.generator import GeneratedLog, generate
from engine.synth.params import WorldParams

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only sample data beside the repository (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_world() -> GeneratedLog:
    """20k rows of a dense world: few households, so exposures and caps happen often."""
    return generate(WorldParams(rows=20_000, seed=11, rows_per_household=400, days=7))


@pytest.fixture(scope="session")
def medium_world() -> GeneratedLog:
    """150k rows at the default density, for statistical checks against the truth."""
    return generate(WorldParams(rows=150_000, seed=5))


@pytest.fixture(scope="session")
def memory_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped config with the in-memory cap store (offline, one process)."""
    text = (ROOT / "engine" / "default_config.toml").read_text()
    path = tmp_path_factory.mktemp("config") / "memory.toml"
    path.write_text(text.replace('url = ""', 'url = "memory://"', 1))
    return path


@pytest.fixture(scope="session")
def model_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60k-row log on disk for training tests."""
    from engine.synth.generator import write_generated

    path = tmp_path_factory.mktemp("model_log") / "log.parquet"
    write_generated(generate(WorldParams(rows=60_000, seed=21)), path)
    return path


@pytest.fixture(scope="session")
def model_dir(model_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained once (single-threaded, so deterministic), not compiled."""
    from engine.model.train import TrainParams, train

    out = tmp_path_factory.mktemp("model")
    train(model_log, out, TrainParams(seed=3, threads=1, compile=False, max_rounds=300))
    return out


@pytest.fixture(scope="session")
def scorer(model_dir: Path) -> Scorer:
    """A scorer with the small model and the shipped default config."""
    from engine.config import load_config
    from engine.model.bundle import ModelBundle

    return Scorer(ModelBundle.load(model_dir, runtime="lightgbm"), load_config())
