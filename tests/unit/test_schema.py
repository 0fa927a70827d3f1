"""The log schema: validation errors name the column; compatible inputs are coerced."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engine.errors import LogSchemaError
from features.logio import read_log, scan_log, validate_log, write_log
from features.schema import COLUMNS, REQUIRED_COLUMNS, polars_schema

ROOT = Path(__file__).resolve().parents[2]


def minimal(**overrides: object) -> pl.DataFrame:
    """Two candidate rows of one request with only the required columns."""
    data: dict[str, object] = {
        "request_id": ["r1", "r1"],
        "ts": [datetime(2026, 3, 2, 20, tzinfo=UTC)] * 2,
        "user_id": ["u1", "u1"],
        "touchpoint": ["ott", "ott"],
        "slot": ["ott_pause", "ott_pause"],
        "ad_id": ["a1", "a2"],
        "format": ["image", "video"],
        "bid": [12.0, 0.8],
        "pricing": ["cpm", "cpc"],
        "shown": [True, False],
    }
    data.update(overrides)
    return pl.DataFrame(data)


def test_minimal_log_gets_every_schema_column_with_nulls() -> None:
    out = validate_log(minimal())
    assert out.schema == polars_schema()
    assert out["household_id"].null_count() == 2
    assert out["touchpoint"].dtype == pl.Enum(["ai_voice", "ott", "iot", "mobile"])


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_required_column_is_named(column: str) -> None:
    with pytest.raises(LogSchemaError, match=rf"^{column}: required column missing"):
        validate_log(minimal().drop(column))


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("bid", ["12", "0.8"], "bid: has dtype String, expected Float64"),
        ("shown", ["yes", "no"], "shown: has dtype String, expected Boolean"),
        ("ts", ["2026-03-02", "2026-03-02"], "ts: has dtype String"),
        ("local_hour", [1.5, 2.0], "local_hour: has dtype Float64, expected Int8"),
        ("user_interests", ["music", "food"], "user_interests: has dtype String"),
    ],
    ids=["bid-text", "shown-text", "ts-text", "hour-float", "interests-not-list"],
)
def test_mistyped_column_is_named(column: str, values: list[object], message: str) -> None:
    with pytest.raises(LogSchemaError, match=re.escape(message)):
        validate_log(minimal(**{column: values}))


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("touchpoint", ["ott", "tv"], "touchpoint: 1 row(s) with values outside"),
        ("slot", ["ott_pause", "banner"], "slot: 1 row(s) with values outside"),
        ("local_hour", [25, 3], "local_hour: 1 row(s) with values outside [0, 23]"),
        ("bid", [-1.0, 2.0], "bid: 1 row(s) with values outside [0, None] or NaN"),
        ("bid", [float("nan"), 2.0], "bid: 1 row(s) with values outside [0, None] or NaN"),
        ("propensity", [1.5, 0.5], "propensity: 1 row(s) with values outside [0, 1]"),
        ("propensity", [0.0, 0.5], "propensity: 1 row(s) with zero propensities"),
        ("ad_id", ["a1", None], "ad_id: 1 row(s) with null values"),
        ("user_id", ["u1", "u2"], "user_id: differs between rows of the same request_id"),
        ("local_hour", [300, 3], "local_hour: 1 row(s) with values that do not fit Int8, e.g. 300"),
        (
            "ts",
            [datetime(1969, 12, 31, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)],
            "ts: 2 row(s) with times before 1970 or from 2200",
        ),
    ],
    ids=[
        "touchpoint",
        "slot",
        "hour",
        "negative-bid",
        "nan-bid",
        "propensity>1",
        "propensity-0",
        "null-ad",
        "user-varies",
        "hour-overflow",
        "ts-range",
    ],
)
def test_bad_values_are_named(column: str, values: list[object], message: str) -> None:
    with pytest.raises(LogSchemaError, match=re.escape(message)):
        validate_log(minimal(**{column: values}))


def test_unknown_enum_value_is_quoted_in_the_error() -> None:
    with pytest.raises(LogSchemaError, match="e.g. 'tv'"):
        validate_log(minimal(touchpoint=["ott", "tv"]))


def test_naive_timestamps_are_refused() -> None:
    naive = [datetime(2026, 3, 2, 20)] * 2
    with pytest.raises(LogSchemaError, match="ts: is a naive datetime"):
        validate_log(minimal(ts=naive))


def test_compatible_inputs_are_coerced() -> None:
    frame = minimal(
        bid=[12, 1],
        local_hour=pl.Series([20, 20], dtype=pl.Int64),
        slot=pl.Series(["ott_pause", "ott_pause"], dtype=pl.Categorical),
        user_id=[17, 17],
        shown=[1, 0],
    ).with_columns(pl.col("ts").dt.convert_time_zone("Asia/Shanghai").dt.cast_time_unit("ns"))
    out = validate_log(frame)
    assert out["bid"].to_list() == [12.0, 1.0]
    assert out["user_id"].to_list() == ["17", "17"]
    assert out["shown"].to_list() == [True, False]
    assert out["ts"].dtype == pl.Datetime("us", "UTC")
    assert out["ts"][0] == datetime(2026, 3, 2, 20, tzinfo=UTC)


def test_extra_columns_are_kept_after_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    write_log(validate_log(minimal(position=[1, 2])), path)
    out = read_log(path)
    assert out.columns[-1] == "position"
    assert out["position"].to_list() == [1, 2]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LogSchemaError, match="file not found"):
        read_log(tmp_path / "nope.parquet")


@pytest.mark.parametrize("name", ["log.parquet", "log.arrow"])
def test_a_file_that_is_no_log_is_a_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("request_id,ts\n")
    for read in (read_log, scan_log):
        with pytest.raises(LogSchemaError, match=f"^log: cannot read {re.escape(str(path))}"):
            read(path)


def test_docs_describe_every_column() -> None:
    doc = (ROOT / "docs" / "log-schema.md").read_text()
    missing = [c.name for c in COLUMNS if f"`{c.name}`" not in doc]
    assert not missing, f"docs/log-schema.md lacks {missing}"


def test_arrow_schema_matches_the_polars_schema() -> None:
    import pyarrow as pa

    from features.schema import arrow_schema

    schema = arrow_schema()
    assert isinstance(schema, pa.Schema)
    assert schema.names == polars_schema().names()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("bid").type == pa.float64()
    assert pa.types.is_dictionary(schema.field("touchpoint").type)  # enums are dictionaries
    assert schema.field("user_interests").type in (
        pa.list_(pa.string()),
        pa.list_(pa.large_string()),
        pa.large_list(pa.large_string()),
    )
