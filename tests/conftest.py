"""Shared fixtures: small generated worlds (session-scoped, fixed seeds) and the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

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
