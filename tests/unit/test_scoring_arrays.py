"""The scoring core's array shortcuts equal the plain forms they replace.

The scorer reads enum codes through Arrow instead of polars' ``to_physical``, sorts by numbers
and reads ad ids only for ties, and skips ``nan_to_num`` on finite counts; each must give
exactly what the plain form gives, including nulls, ties, NaN and infinite counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest

from engine.config import load_config
from engine.scoring import rules as R
from engine.scoring.selection import _order
from features.exposure import EXPOSURE_SCHEMA
from features.online import RequestContext, assemble

T = datetime(2026, 3, 3, 20, 15, tzinfo=UTC)
EXP = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}


def context(i: int, **kw: Any) -> RequestContext:
    return RequestContext(f"r{i}", T, "u1", "ott", "ott_pause", **kw)


def candidates(n: int, **kw: list[Any]) -> dict[str, list[Any]]:
    base: dict[str, list[Any]] = {
        "ad_id": [f"a{i}" for i in range(n)],
        "format": ["video"] * n,
        "bid": [1.0] * n,
        "pricing": ["cpm"] * n,
    }
    return base | kw


def plain_rows(inputs: pl.DataFrame) -> dict[str, np.ndarray]:
    """Rows as the scorer read them with polars expressions (the reference)."""

    def code(name: str, default: int) -> np.ndarray:
        return inputs[name].to_physical().fill_null(default).to_numpy().astype(np.int64)

    return {
        "touchpoint": code("touchpoint", 0),
        "slot": code("slot", 0),
        "scene": code("scene", -1),
        "rating": code("content_rating", R.GENERAL),
        "tier": code("suitability_tier", R.GENERAL),
        "format": code("format", 0),
        "pricing": code("pricing", 0),
        "hour": inputs["local_hour"].fill_null(-1).to_numpy().astype(np.int64),
        "duration_s": inputs["duration_s"].fill_null(0.0).to_numpy(),
        "bid": inputs["bid"].to_numpy(),
    }


def frames() -> dict[str, pl.DataFrame]:
    """Input frames with nulls, one category of many, NaN durations and several chunks."""
    one = assemble(
        [context(0, scene=None, local_hour=None)],
        [candidates(3, suitability_tier=["mature", None, "kids"], duration_s=[None, 5.0, 9.0])],
    )
    many = assemble(
        [context(0, scene="family", content_rating="teen", local_hour=3), context(1)],
        [
            candidates(2, format=["interactive", "text"], duration_s=[float("nan"), 1.0]),
            candidates(1, pricing=["cpa"], suitability_tier=["teen"]),
        ],
    )
    return {"one-request-nulls": one, "two-requests": many, "two-chunks": pl.concat([one, many])}


@pytest.mark.parametrize("name", ["one-request-nulls", "two-requests", "two-chunks"])
def test_rows_equal_the_polars_reading(name: str) -> None:
    inputs = frames()[name]
    rows = R.Rows.from_inputs(inputs)
    for field, want in plain_rows(inputs).items():
        got = getattr(rows, field)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), field


def plain_order(owner: np.ndarray, eligible: np.ndarray, u: np.ndarray, ids: Any) -> np.ndarray:
    order = np.lexsort((np.asarray(ids) if isinstance(ids, list) else ids, -u, ~eligible, owner))
    return order[eligible[order]]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("ids", ["strings", "codes"])
def test_selection_order_equals_the_full_sort(seed: int, ids: str) -> None:
    """Heavy ties (few distinct utilities), NaN utilities and -0.0: ad ids break ties."""
    rng = np.random.default_rng(seed)
    n = 300
    owner = np.sort(rng.integers(0, 7, n))
    eligible = rng.random(n) < 0.7
    utility = rng.choice([0.5, 0.25, -0.0, 0.0, np.nan, 1.0], n)
    names = [f"ad{k}#{rng.integers(0, 1000)}" for k in rng.permutation(n)]
    ad_id: Any = names if ids == "strings" else rng.permutation(n)
    got = _order(owner, eligible, utility, ad_id)
    assert np.array_equal(got, plain_order(owner, eligible, utility, ad_id))


def test_counts_read_as_nan_to_num_does() -> None:
    """A NaN count is 0 and an infinite one the largest float, for fatigue and caps alike."""
    rules = R.CompiledRules.build(load_config())
    exposures = np.zeros((3, len(EXPOSURE_SCHEMA)))
    column = EXP["exp_user_campaign_24h"]
    exposures[:, column] = [np.nan, np.inf, 1.0]
    plain = np.nan_to_num(exposures, nan=0.0)
    rows = R.Rows.from_inputs(frames()["one-request-nulls"])
    p = np.full(3, 0.1)
    fatigue = R.cost_components(rules, rows, p, p, exposures)[:, 4]
    assert np.array_equal(fatigue, np.log1p(plain[:, column]))
    capped = np.zeros(3, dtype=bool)
    for col, limit in rules.caps:
        capped |= plain[:, col] >= limit
    assert np.array_equal(R.frequency_capped(rules, exposures), capped)
