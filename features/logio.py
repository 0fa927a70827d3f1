"""Reading, validating and writing ad-opportunity logs.

``validate_log`` is the one gate every log passes: it coerces compatible dtypes to the schema
(integers to floats, strings to enums, any UTC-aware timestamp to UTC microseconds), fills absent
optional columns with nulls, and raises :class:`~engine.errors.LogSchemaError` naming the column
for anything it cannot take: a missing required column, a mistyped column, a value outside its
vocabulary or range, a null where none is allowed. Columns the schema does not know are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.errors import LogSchemaError
from features.schema import (
    COLUMNS,
    EARLIEST_TS,
    LATEST_TS,
    REQUEST_COLUMNS,
    REQUIRED_COLUMNS,
    Column,
)

_INTEGER = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOAT = (pl.Float32, pl.Float64)
_TEXT = (pl.String, pl.Categorical, pl.Enum)
COLUMN_DTYPES = {c.name: c.dtype for c in COLUMNS}


def _kind(dtype: pl.DataType) -> str:
    if isinstance(dtype, _INTEGER):
        return "integer"
    if isinstance(dtype, _FLOAT):
        return "float"
    if isinstance(dtype, _TEXT):
        return "text"
    if isinstance(dtype, pl.Boolean):
        return "bool"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.List):
        return "list"
    return str(dtype)


_ACCEPTS: dict[str, set[str]] = {
    "text": {"text", "integer"},
    "enum": {"text"},
    "float": {"float", "integer"},
    "integer": {"integer"},
    "bool": {"bool", "integer"},
    "datetime": {"datetime"},
    "list": {"list"},
}


def _target_kind(col: Column) -> str:
    return "enum" if isinstance(col.dtype, pl.Enum) else _kind(col.dtype)


def _coerce_expr(col: Column, source: pl.DataType) -> pl.Expr:
    """Expression casting the present column to the schema dtype (checked compatible)."""
    e = pl.col(col.name)
    if isinstance(col.dtype, pl.Datetime):
        return e.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if isinstance(col.dtype, pl.List):
        return e.cast(pl.List(pl.String))
    if isinstance(col.dtype, pl.Enum) and isinstance(source, pl.Enum | pl.Categorical):
        e = e.cast(pl.String)
    return e.cast(col.dtype, strict=False)


def _check_dtype(col: Column, dtype: pl.DataType) -> None:
    want = _target_kind(col)
    have = _kind(dtype)
    if have not in _ACCEPTS[want]:
        raise LogSchemaError(col.name, f"has dtype {dtype}, expected {col.dtype} ({col.unit})")
    if want == "datetime":
        assert isinstance(dtype, pl.Datetime)
        if dtype.time_zone is None:
            raise LogSchemaError(
                col.name,
                "is a naive datetime; the schema needs time-zone-aware UTC timestamps "
                "(an import mapping can set the zone with timestamp.timezone)",
            )
    if want == "list":
        assert isinstance(dtype, pl.List)
        inner = dtype.inner
        if _kind(inner() if isinstance(inner, type) else inner) not in {"text", "integer"}:
            raise LogSchemaError(col.name, f"has dtype {dtype}, expected a list of strings")


def conform(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Check dtypes and cast a lazy log to the schema, without reading values.

    Raises:
        LogSchemaError: a required column is missing or a column has an incompatible dtype.
    """
    schema = frame.collect_schema()
    missing = [name for name in REQUIRED_COLUMNS if name not in schema]
    if missing:
        raise LogSchemaError(
            missing[0], f"required column missing (all missing: {', '.join(missing)})"
        )
    exprs = []
    for col in COLUMNS:
        if col.name in schema and schema[col.name] == col.dtype:
            exprs.append(pl.col(col.name))  # already right: no cast (a list cast copies)
        elif col.name in schema:
            _check_dtype(col, schema[col.name])
            exprs.append(_coerce_expr(col, schema[col.name]).alias(col.name))
        else:
            exprs.append(pl.lit(None, dtype=col.dtype).alias(col.name))
    extra = [pl.col(name) for name in schema.names() if name not in {c.name for c in COLUMNS}]
    return frame.select(exprs + extra)


@dataclass(frozen=True)
class RowCheck:
    """One value rule of the log: ``bad`` is true on a row that breaks it; ``row`` says why
    for one row, ``rows`` for a count of them."""

    column: str
    row: str
    rows: str
    bad: pl.Expr


def row_checks(present: set[str] | None = None) -> list[RowCheck]:
    """The checks each row of a conformed log must pass: the one set of value rules of the
    log, shared by :func:`validate_log` (which counts) and the importer (which rejects rows).

    Args:
        present: the columns a null check applies to (default: all; an absent optional
            column is all null and breaks nothing).
    """
    checks: list[RowCheck] = []
    for col in COLUMNS:
        c = pl.col(col.name)
        if not col.nullable and (present is None or col.name in present):
            checks.append(RowCheck(col.name, "required value missing", "null values", c.is_null()))
        if col.low is not None or col.high is not None:
            rng = col.range_text
            bad = col.out_of_range(c)
            checks.append(RowCheck(col.name, f"outside {rng}", f"values outside {rng} or NaN", bad))
    zero = (pl.col("propensity") == 0).fill_null(False)
    checks.append(RowCheck("propensity", "zero", "zero propensities", zero))
    early, late = pl.col("ts") < EARLIEST_TS, pl.col("ts") >= LATEST_TS
    span = f"before {EARLIEST_TS.year} or from {LATEST_TS.year}"
    checks.append(RowCheck("ts", span, f"times {span}", (early | late).fill_null(False)))
    return checks


def _value_problems(raw: pl.DataFrame, out: pl.DataFrame) -> None:
    """Raise for the first column whose values break the schema."""
    checks: list[pl.Expr] = []
    for col in COLUMNS:
        c = pl.col(col.name)
        if col.name in raw.columns and raw.schema[col.name] != col.dtype:  # cast: nothing lost
            lost = c.is_null() & pl.lit(raw[col.name]).is_not_null()
            if isinstance(col.dtype, pl.Enum):
                problem = f"values outside {'|'.join(col.dtype.categories)}"
            else:
                problem = f"values that do not fit {col.dtype}"
            checks.append(lost.sum().alias(f"{col.name}\t{problem}"))
    for check in row_checks():
        checks.append(check.bad.sum().alias(f"{check.column}\t{check.rows}"))
    counts = out.select(checks).row(0, named=True)
    for key, n in counts.items():
        if n:
            name, problem = key.split("\t")
            example = _example(raw, out, name)
            raise LogSchemaError(name, f"{n} row(s) with {problem}{example}")


def _example(raw: pl.DataFrame, out: pl.DataFrame, name: str) -> str:
    if name not in raw.columns:
        return ""
    values = raw[name]
    if raw.schema[name] != COLUMN_DTYPES[name]:  # a value the cast lost
        bad = values.filter(out[name].is_null() & values.is_not_null())
        if len(bad):
            return f", e.g. {bad[0]!r}"
    return ""


def _request_consistency(out: pl.DataFrame) -> None:
    """Every request column must hold one value per request_id."""
    present = [c for c in REQUEST_COLUMNS if c != "request_id" and out[c].null_count() < len(out)]
    if not present or out.is_empty():
        return
    varying = out.group_by("request_id").agg([pl.col(c).n_unique().gt(1).alias(c) for c in present])
    totals = varying.select(pl.col(present).sum()).row(0, named=True)
    for name, n in totals.items():
        if n:
            raise LogSchemaError(
                name, f"differs between rows of the same request_id in {n} request(s)"
            )


def validate_log(frame: pl.DataFrame, whole_requests: bool = True) -> pl.DataFrame:
    """Validate and coerce an in-memory log to the schema (``whole_requests``: also that
    each request's rows agree on its request columns).

    Returns:
        The log with every schema column in canonical order (absent optional columns as nulls),
        followed by any extra columns unchanged.

    Raises:
        LogSchemaError: naming the first column that breaks the schema and how.
    """
    out = conform(frame.lazy()).collect()
    _value_problems(frame, out)
    if whole_requests:
        _request_consistency(out)
    return out


def read_log(path: str | Path) -> pl.DataFrame:
    """Read and validate a log from Parquet (or Arrow IPC with suffix .arrow/.ipc)."""
    return validate_log(_read(Path(path)))


def scan_log(path: str | Path) -> pl.LazyFrame:
    """Lazily scan a log, checking dtypes now and values never (callers stream batches)."""
    p = Path(path)
    with _opening(p):  # conform reads the file's schema
        lf = pl.scan_ipc(p) if p.suffix in {".arrow", ".ipc"} else pl.scan_parquet(p)
        return conform(lf)


def _read(path: Path) -> pl.DataFrame:
    with _opening(path):
        return pl.read_ipc(path) if path.suffix in {".arrow", ".ipc"} else pl.read_parquet(path)


@contextmanager
def _opening(path: Path) -> Iterator[None]:
    """A missing file, or one that is not Parquet / Arrow IPC, as ``LogSchemaError``."""
    if not path.exists():
        raise LogSchemaError("log", f"file not found: {path}")
    try:
        yield
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LogSchemaError("log", f"cannot read {path}: {exc}") from exc


def write_log(frame: pl.DataFrame, path: str | Path) -> None:
    """Write a validated log as Parquet (zstd)."""
    frame.write_parquet(Path(path), compression="zstd", statistics=True)
