"""The counting kernels behind offline exposure counts, against brute force and numpy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features import counting
from features.exposure import (
    BUCKET_S,
    EXPOSURE_KEYS,
    EXPOSURE_SCHEMA,
    RECENCY_WINDOW,
    SCOPES,
    TARGETS,
    WINDOWS_S,
    count_column,
    point_in_time_exposures,
    since_column,
    window_start,
)
from features.logio import validate_log

T0 = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rows", "needles"),
    [
        ([1, 2, 2, 2, 5, 5, 9], [0, 1, 2, 3, 5, 6, 9, 10]),
        ([1, 1, 1], [1, 1]),
        ([], [3, 4]),
        ([4, 7], []),
    ],
    ids=["ties", "all-equal", "no-rows", "no-needles"],
)
@pytest.mark.parametrize("inclusive", [True, False], ids=["left", "right"])
def test_first_row_after_is_searchsorted(
    rows: list[int], needles: list[int], inclusive: bool
) -> None:
    r, n = np.array(rows, dtype=np.int64), np.array(needles, dtype=np.int64)
    expected = np.searchsorted(r, n, side="left" if inclusive else "right")
    np.testing.assert_array_equal(counting.first_row_after(r, n, inclusive), expected)


@pytest.mark.parametrize("sparse", [False, True], ids=["lookup-table", "sorted-unique"])
def test_dense_codes_keep_nulls_apart_and_values_distinct(sparse: bool) -> None:
    raw = np.array([5, 0, 9, 5, 0, 12], dtype=np.int64) * (10**6 if sparse else 1)
    codes = counting._densify(raw)
    np.testing.assert_array_equal(codes.valid, raw > 0)
    assert codes.code[1] == codes.code[4] == 0 and codes.code[0] == codes.code[3]
    assert len({codes.code[0], codes.code[2], codes.code[5], 0}) == 4
    assert codes.size == 4 and codes.code.max() < codes.size


def test_dense_codes_of_strings() -> None:
    frame = pl.DataFrame({"a": ["x", None, "y", "x"], "b": [None, None, None, None]})
    codes = counting.dense_codes(frame.cast({"b": pl.String}), ["a", "b"])
    a, b = codes["a"], codes["b"]
    assert a.code[0] == a.code[3] != a.code[2] and a.code[1] == 0 and a.size == 3
    assert b.size == 1 and not b.valid.any()


@pytest.mark.parametrize("size", [50, 1 << 20], ids=["radix", "polars"])
def test_stable_order_keeps_ties_in_input_order(size: int) -> None:
    code = np.random.default_rng(0).integers(0, min(size, 40), 5_000) * (size // 40 or 1)
    order = counting.stable_order(code, size)
    np.testing.assert_array_equal(order, np.argsort(code, kind="stable"))


def test_too_long_a_line_is_an_overflow() -> None:
    codes = counting.Codes(np.arange(4), 4, np.ones(4, dtype=bool))
    with pytest.raises(OverflowError):
        counting.line(codes, np.ones(4, dtype=np.int64), span=2**61)


def request_log(n_requests: int, n_scope: int, n_target: int, seed: int) -> pl.DataFrame:
    """Requests of 1-4 candidates at random times, ids drawn from small pools, some null."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, n_requests)
    owner = np.repeat(np.arange(n_requests), per)
    n = len(owner)
    seconds = np.sort(rng.integers(0, 9 * 86_400, n_requests))[owner]

    def ids(prefix: str, pool: int, size: int, null_share: float) -> list[str | None]:
        values = rng.integers(0, pool, size)
        nulls = rng.random(size) < null_share
        return [None if z else f"{prefix}{v}" for v, z in zip(values, nulls, strict=True)]

    user = ids("u", n_scope, n_requests, 0.0)
    house = ids("h", max(n_scope // 3, 1), n_requests, 0.2)
    device = ids("d", n_scope, n_requests, 0.2)
    return validate_log(
        pl.DataFrame(
            {
                "request_id": [f"r{o}" for o in owner],
                "ts": [T0 + timedelta(seconds=int(s)) for s in seconds],
                "user_id": [user[o] for o in owner],
                "household_id": [house[o] for o in owner],
                "device_id": [device[o] for o in owner],
                "touchpoint": ["ott"] * n,
                "slot": ["ott_pause"] * n,
                "ad_id": [f"a{i}" for i in range(n)],
                "campaign_id": ids("c", n_target, n, 0.1),
                "advertiser_id": ids("v", max(n_target // 2, 1), n, 0.1),
                "format": ["image"] * n,
                "bid": [1.0] * n,
                "pricing": ["cpm"] * n,
                "shown": (rng.random(n) < 0.5).tolist(),
            }
        )
    )


def brute_force(out: pl.DataFrame) -> dict[str, np.ndarray]:
    """Every exposure column by its definition, comparing all pairs of rows."""
    t = out["ts"].dt.epoch("us").to_numpy()
    shown = out["shown"].to_numpy()
    earlier = t[None, :] < t[:, None]  # [row, event]
    cols: dict[str, np.ndarray] = {}
    for key in EXPOSURE_KEYS:
        same = shown[None, :] & earlier
        for column in key.id_columns:
            v = out[column].to_numpy()
            valid = out[column].is_not_null().to_numpy()
            same &= (v[None, :] == v[:, None]) & valid[None, :] & valid[:, None]
        for window, seconds in WINDOWS_S.items():
            if BUCKET_S[window]:  # from the start of the hour (day) n - 1 buckets back
                inside = same & (t[None, :] >= window_start(t, window)[:, None])
            else:
                inside = same & (t[None, :] > t[:, None] - seconds * 1_000_000)
            cols[count_column(key.scope, key.target, window)] = inside.sum(axis=1)
        if key.target == "campaign":  # the latest within the recency's window
            same &= t[None, :] >= window_start(t, RECENCY_WINDOW)[:, None]
            gap = np.where(same, t[:, None] - t[None, :], np.iinfo(np.int64).max).min(axis=1)
            has = same.any(axis=1)
            cols[since_column(key.scope)] = np.where(has, gap / 1_000_000, np.nan)
    return cols


@pytest.mark.parametrize(
    ("n_scope", "n_target"),
    [(6, 4), (100, 700)],
    ids=["few-keys", "many-keys"],  # many keys: pair codes past 16 bits, ranks by gather
)
def test_every_exposure_column_matches_brute_force(n_scope: int, n_target: int) -> None:
    log = request_log(800, n_scope, n_target, seed=n_scope)
    out = point_in_time_exposures(log.lazy()).collect()
    expected = brute_force(out)
    assert out.select(EXPOSURE_SCHEMA.names()).schema == EXPOSURE_SCHEMA
    for name in EXPOSURE_SCHEMA.names():
        got = out[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
    for key in EXPOSURE_KEYS:  # the check saw real history for every key
        assert (out[count_column(key.scope, key.target, "7d")] > 0).any(), key


def test_empty_log_gets_every_exposure_column() -> None:
    out = point_in_time_exposures(request_log(3, 2, 2, seed=0).head(0).lazy()).collect()
    assert out.is_empty() and out.select(EXPOSURE_SCHEMA.names()).schema == EXPOSURE_SCHEMA


def test_scopes_and_targets_cover_every_key() -> None:
    assert {(k.scope, k.target) for k in EXPOSURE_KEYS} == {(s, t) for s in SCOPES for t in TARGETS}
