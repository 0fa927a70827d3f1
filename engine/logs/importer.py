"""``admatch import-log``: turn CSV or Parquet logs into the ad-opportunity log with a mapping.

Rows are never dropped silently: a row whose mapped value cannot be read (a bad timestamp, a
number that is not one, a value outside a vocabulary or a map, a required value missing, a value
out of range) is written to ``<out>.rejects.parquet`` with its source file, line and the reason,
and counted in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import MappingError
from engine.logs.mapping import Mapping
from features.logio import validate_log, write_log
from features.schema import COLUMN_BY_NAME, COLUMNS, Column

_FILE, _LINE, _REASON = "source_file", "source_line", "reject_reason"
_TRUE = ["true", "t", "1", "yes", "y", "1.0"]
_FALSE = ["false", "f", "0", "no", "n", "0.0"]


@dataclass
class ImportReport:
    """What an import did."""

    inputs: list[str]
    rows_read: int
    rows_written: int
    rows_rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    out: str = ""
    rejects: str | None = None


def _scan(path: Path, mapping: Mapping) -> pl.LazyFrame:
    if not path.exists():
        raise MappingError("input", f"file not found: {path}")
    fmt = mapping.source.format or ("parquet" if path.suffix == ".parquet" else "csv")
    if fmt == "parquet":
        lf = pl.scan_parquet(path)
    else:  # every CSV field as text, so each conversion below is explicit and checked
        lf = pl.scan_csv(
            path,
            infer_schema=False,
            separator=mapping.source.separator,
            null_values=mapping.source.null_values or None,
        )
    return lf.with_row_index(_LINE, offset=1).with_columns(pl.lit(str(path)).alias(_FILE))


def _to_bool(e: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Boolean:
        return e
    if dtype.is_numeric():
        return pl.when(e.is_in([0, 1])).then(e == 1)
    text = e.cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.when(text.is_in(_TRUE)).then(True).when(text.is_in(_FALSE)).then(False)


def _timestamp(m: Mapping, schema: pl.Schema) -> pl.Expr:
    ts = m.timestamp
    assert ts is not None
    target = COLUMN_BY_NAME["ts"].dtype
    if ts.constant is not None:
        try:
            value = datetime.fromisoformat(ts.constant)
        except ValueError as exc:
            raise MappingError("timestamp.constant", f"not an ISO 8601 time: {exc}") from exc
        e = pl.lit(value)
        return (
            (e.dt.replace_time_zone(ts.timezone) if value.tzinfo is None else e)
            .dt.convert_time_zone("UTC")
            .cast(target)
        )
    col = pl.col(ts.column or "")
    if ts.epoch_unit is not None:
        raw = (
            col.cast(pl.Float64, strict=False) if schema.get(ts.column or "") == pl.String else col
        )
        scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[ts.epoch_unit]
        micros = (raw.cast(pl.Float64) * scale).round().cast(pl.Int64, strict=False)
        return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    parsed = col.cast(pl.String).str.to_datetime(ts.format, time_unit="us", strict=False)
    zoned = (
        parsed.dt.replace_time_zone(ts.timezone)
        if "%z" not in (ts.format or "") and "%:z" not in (ts.format or "")
        else parsed
    )
    return zoned.dt.convert_time_zone("UTC")


def _coerce(e: pl.Expr, col: Column, source: pl.DataType | None) -> pl.Expr:
    dtype = col.dtype
    if dtype == pl.Boolean:
        return _to_bool(e, source or pl.String())
    if isinstance(dtype, pl.Enum):
        return e.cast(pl.String).str.strip_chars().cast(dtype, strict=False)
    if dtype == pl.String:
        return e.cast(pl.String)
    if isinstance(dtype, pl.List):
        return e.cast(pl.List(pl.String), strict=False)
    if isinstance(dtype, pl.Datetime):
        return e
    return (
        e.cast(pl.Float64, strict=False).cast(dtype, strict=False)
        if source == pl.String
        else e.cast(dtype, strict=False)
    )


def _target(name: str, section: str, m: Mapping, schema: pl.Schema) -> tuple[pl.Expr, list[str]]:
    """The expression for one schema column and the source columns it reads."""
    col = COLUMN_BY_NAME[name]
    if section == "timestamp":
        return _timestamp(m, schema), [
            m.timestamp.column
        ] if m.timestamp and m.timestamp.column else []
    if section == "constants":
        return _coerce(pl.lit(m.constants[name]), col, None), []
    if section in ("columns", "outcomes"):
        src = getattr(m, section)[name]
        return _coerce(pl.col(src), col, schema.get(src)), [src]
    if section == "value_maps":
        vm = m.value_maps[name]
        mapped = (
            pl.col(vm.source)
            .cast(pl.String)
            .replace_strict(
                {k: str(v) for k, v in vm.values.items()},
                default=pl.lit(None if vm.default is None else str(vm.default), dtype=pl.String),
                return_dtype=pl.String,
            )
        )
        return _coerce(mapped, col, pl.String()), [vm.source]
    expr = _sql(m.expressions[name], f"expressions.{name}")
    return _coerce(expr, col, None), expr.meta.root_names()


def _check_types(source: pl.LazyFrame, key: str, expr: pl.Expr) -> None:
    """Resolve an expression against the input's columns, so type errors name their key."""
    try:
        source.select(expr).collect_schema()
    except pl.exceptions.PolarsError as exc:
        first = str(exc).splitlines()[0]
        raise MappingError(
            key, f"{first} (CSV columns are read as text: use TRY_CAST(col AS DOUBLE) for numbers)"
        ) from exc


def _failure(name: str, e: pl.Expr, roots: list[str]) -> pl.Expr:
    """Reason text where this column's value could not be read, else null."""
    col = COLUMN_BY_NAME[name]
    inputs_present = (
        pl.all_horizontal([pl.col(r).is_not_null() for r in roots]) if roots else pl.lit(True)
    )
    lost = e.is_null() & inputs_present
    missing = e.is_null() if not col.nullable else pl.lit(False)
    reason: Any = pl.when(lost).then(pl.lit(f"{name}: cannot read {'/'.join(roots) or 'value'}"))
    reason = reason.when(missing).then(pl.lit(f"{name}: required value missing"))
    if col.low is not None or col.high is not None:
        reason = reason.when(col.out_of_range(e)).then(pl.lit(f"{name}: outside {col.range_text}"))
    return reason


def _sql(text: str, key: str) -> pl.Expr:
    try:
        return pl.sql_expr(text)
    except pl.exceptions.PolarsError as exc:
        raise MappingError(key, f"not a valid SQL expression: {exc}") from exc


def _derive(m: Mapping, source: pl.LazyFrame) -> pl.LazyFrame:
    """Add the mapping's helper columns, checking that they read existing columns."""
    names = source.collect_schema().names()
    for name, text in m.derived.items():
        expr = _sql(text, f"derived.{name}")
        for root in expr.meta.root_names():
            if root not in names:
                raise MappingError(f"derived.{name}", f"source column {root!r} is not in the input")
        source = source.with_columns(expr.alias(name))
        _check_types(source, f"derived.{name}", pl.col(name))
        names.append(name)
    return source


def _check_sources(m: Mapping, schema: pl.Schema, used: dict[str, list[str]]) -> None:
    for name, roots in used.items():
        for r in roots:
            if r not in schema:
                raise MappingError(
                    f"{m.targets()[name]}.{name}", f"source column {r!r} is not in the input"
                )
    for c in m.passthrough.columns:
        if c in COLUMN_BY_NAME:
            raise MappingError("passthrough.columns", f"{c!r} is a schema column; map it instead")
        if c not in schema:
            raise MappingError("passthrough.columns", f"source column {c!r} is not in the input")


def import_log(mapping: Mapping, inputs: Sequence[Path], out: Path) -> ImportReport:
    """Import ``inputs`` through ``mapping`` into ``out`` (Parquet, sorted by ts).

    Raises:
        MappingError: an input is missing, a mapped source column is absent, or an expression
            does not parse.
        LogSchemaError: the accepted rows, taken together, break the schema (for example a
            request whose rows disagree on its user).
    """
    if not inputs:
        raise MappingError("input", "no input files given")
    source = _derive(
        mapping, pl.concat([_scan(Path(p), mapping) for p in inputs], how="diagonal_relaxed")
    )
    schema = source.collect_schema()
    exprs, used = {}, {}
    for name, section in mapping.targets().items():
        exprs[name], used[name] = _target(name, section, mapping, schema)
    _check_sources(mapping, schema, used)
    for name, expr in exprs.items():
        _check_types(source, f"{mapping.targets()[name]}.{name}", expr)
    reason = pl.coalesce([_failure(n, exprs[n], used[n]) for n in exprs] or [pl.lit(None)])
    try:
        frame = (
            source.with_columns(reason.cast(pl.String).alias(_REASON))
            .with_columns([e.alias(f"__t_{n}") for n, e in exprs.items()])
            .collect()
        )
    except pl.exceptions.PolarsError as exc:
        raise MappingError(
            "expressions",
            f"{str(exc).splitlines()[0]} (use TRY_CAST, not CAST, so that rows with bad values "
            "are rejected and reported instead of stopping the import)",
        ) from exc
    bad = frame.filter(pl.col(_REASON).is_not_null())
    good = frame.filter(pl.col(_REASON).is_null())
    ordered = [c.name for c in COLUMNS if c.name in exprs]
    log = validate_log(
        good.select(
            [pl.col(f"__t_{n}").alias(n) for n in ordered]
            + [pl.col(c) for c in mapping.passthrough.columns]
        )
    ).sort("ts", maintain_order=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_log(log, out)
    rejects = _write_rejects(bad, list(schema.names()), out)
    reasons = (
        dict(bad.group_by(_REASON).len().sort("len", descending=True).iter_rows())
        if len(bad)
        else {}
    )
    return ImportReport(
        inputs=[str(p) for p in inputs],
        rows_read=len(frame),
        rows_written=len(log),
        rows_rejected=len(bad),
        reasons=reasons,
        out=str(out),
        rejects=str(rejects) if rejects else None,
    )


def _write_rejects(bad: pl.DataFrame, source_columns: list[str], out: Path) -> Path | None:
    path = out.with_name(out.name + ".rejects.parquet")
    if bad.is_empty():
        path.unlink(missing_ok=True)
        return None
    keep = [_FILE, _LINE, _REASON] + [c for c in source_columns if c not in (_FILE, _LINE)]
    bad.select(keep).write_parquet(path)
    return path
