"""``admatch import-log``: turn CSV or Parquet logs into the ad-opportunity log with a mapping.

Rows are never dropped silently. A row is rejected when a value it has cannot be read (a
timestamp that does not parse, a number that is not one, a value outside a vocabulary or a
value map), when a column that must not be null comes out null, or when a value is out of
range; a request is rejected whole when the service would refuse it (``engine.logs.admit``).
Rejected rows go to ``<out>.rejects.parquet`` with their source file, line, reason and the
value that could not be read. A nullable column may come out null from any mapping section:
a null from the mapping is a value ("none"), not a failure. An import that rejects more than
``max_rejected_pct`` of its rows writes no log and raises :class:`TooManyRejected`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import ConfigError, InvalidArgument, MappingError
from engine.logs.admit import REASON, RULE, admit
from engine.logs.lint import log_warnings
from engine.logs.mapping import Mapping
from engine.logs.reading import FILE, LINE, first_line, scan_input, separator_hint
from engine.rpc.limits import DEFAULT_LIMITS, Limits
from features.logio import conform, row_checks, validate_log, write_log
from features.schema import COLUMN_BY_NAME, Column

VALUE = "reject_value"
_TRUE = ["true", "t", "1", "yes", "y", "1.0"]
_FALSE = ["false", "f", "0", "no", "n", "0.0"]
EXAMPLES = 5  # reasons a report shows, most frequent first


@dataclass(frozen=True)
class RejectReason:
    """One kind of rejection: how many rows, and the first of them."""

    rule: str
    rows: int
    example_file: str
    example_line: int
    example: str  # the first row's reason in full, with the value it could not read


@dataclass
class ImportReport:
    """What an import did."""

    inputs: list[str]
    rows_read: int
    rows_written: int  # 0 when no log was written (too many rejected)
    rows_rejected: int
    reasons: list[RejectReason] = field(default_factory=list)
    out: str = ""
    rejects: str | None = None
    warnings: list[str] = field(default_factory=list)
    max_rejected_pct: float = 1.0
    nulls: dict[str, tuple[int, str]] = field(default_factory=dict)  # column: (rows, key)

    @property
    def rejected_pct(self) -> float:
        """Rejected rows as a percentage of the rows read."""
        return 100.0 * self.rows_rejected / self.rows_read if self.rows_read else 0.0


class TooManyRejected(InvalidArgument):
    """More rows were rejected than allowed: no log was written (the rejects file was)."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        super().__init__(
            "--max-rejected-pct",
            f"{report.rows_rejected:,} of {report.rows_read:,} rows rejected "
            f"({report.rejected_pct:.1f}%, at most {report.max_rejected_pct:g}% allowed): no log "
            f"written; the rejected rows and why: {report.rejects}",
        )


@dataclass(frozen=True)
class _Target:
    """How one schema column is built: its value in the schema dtype, the value before the
    conversion (a non-null value that does not convert rejects the row), and the source
    columns it reads."""

    key: str  # the mapping key that defines it, e.g. "expressions.slot"
    value: pl.Expr
    raw: pl.Expr | None
    roots: list[str]
    unmapped: pl.Expr | None = None  # a value map's source value that is not in the map


def _to_bool(e: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Boolean:
        return e
    if dtype.is_numeric():
        return pl.when(e.is_in([0, 1])).then(e == 1)
    text = e.cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.when(text.is_in(_TRUE)).then(True).when(text.is_in(_FALSE)).then(False)


def _blank_is_null(e: pl.Expr, dtype: pl.DataType | None) -> pl.Expr:
    """Text that is empty or blank means no value."""
    if dtype != pl.String:
        return e
    return pl.when(e.str.strip_chars() != "").then(e)


def _timestamp(m: Mapping, raw: pl.Expr, dtype: pl.DataType | None) -> pl.Expr:
    ts = m.timestamp
    assert ts is not None
    if ts.constant is not None:
        try:
            value = datetime.fromisoformat(ts.constant)
        except ValueError as exc:
            raise MappingError("timestamp.constant", f"not an ISO 8601 time: {exc}") from exc
        e = pl.lit(value)
        return (
            (e.dt.replace_time_zone(ts.timezone) if value.tzinfo is None else e)
            .dt.convert_time_zone("UTC")
            .cast(COLUMN_BY_NAME["ts"].dtype)
        )
    if ts.epoch_unit is not None:
        number = raw.cast(pl.Float64, strict=False) if dtype == pl.String else raw
        scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[ts.epoch_unit]
        micros = (number.cast(pl.Float64) * scale).round().cast(pl.Int64, strict=False)
        return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    fmt, text = ts.format or "", raw.cast(pl.String)
    if "%H" in fmt and "%M" not in fmt:  # an hour without minutes (Avazu's %y%m%d%H)
        fmt, text = fmt + "%M", text + "00"
    parsed = text.str.to_datetime(fmt, time_unit="us", strict=False)
    zoned = parsed if "%z" in fmt or "%:z" in fmt else parsed.dt.replace_time_zone(ts.timezone)
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
    if source == pl.String:
        return e.str.strip_chars().cast(pl.Float64, strict=False).cast(dtype, strict=False)
    return e.cast(dtype, strict=False)


def _dtype(source: pl.LazyFrame, key: str, expr: pl.Expr) -> pl.DataType:
    """The dtype ``expr`` has over the input; a type error names its key."""
    try:
        return source.select(expr.alias("x")).collect_schema()["x"]
    except pl.exceptions.PolarsError as exc:
        raise MappingError(
            key,
            f"{first_line(exc)} (CSV columns are read as text: use TRY_CAST(col AS DOUBLE) "
            "for numbers)",
        ) from exc


def _sources(name: str, section: str, m: Mapping) -> tuple[str, list[str]]:
    """The mapping key that names schema column ``name``'s source columns, and those
    columns."""
    if section == "timestamp":
        ts = m.timestamp
        return "timestamp.column", [ts.column] if ts is not None and ts.column else []
    if section == "value_maps":
        return f"value_maps.{name}.source", [m.value_maps[name].source]
    if section in ("columns", "outcomes"):
        return f"{section}.{name}", [getattr(m, section)[name]]
    if section == "expressions":
        key = f"expressions.{name}"
        return key, _sql(m.expressions[name], key).meta.root_names()
    return f"{section}.{name}", []


def _target(name: str, section: str, m: Mapping, source: pl.LazyFrame) -> _Target:
    """How schema column ``name`` is built from the section that defines it."""
    col = COLUMN_BY_NAME[name]
    schema = source.collect_schema()
    key = "timestamp" if section == "timestamp" else f"{section}.{name}"
    _, roots = _sources(name, section, m)
    if section == "timestamp":
        if not roots:  # a constant
            return _Target(key, _timestamp(m, pl.lit(None), None), None, [])
        dtype = schema.get(roots[0])
        raw = _blank_is_null(pl.col(roots[0]), dtype)
        return _Target(key, _timestamp(m, raw, dtype), raw, roots)
    if section == "constants":
        return _Target(key, _coerce(pl.lit(m.constants[name]), col, None), None, [])
    if section in ("columns", "outcomes"):
        dtype = schema.get(roots[0])
        raw = _blank_is_null(pl.col(roots[0]), dtype)
        return _Target(key, _coerce(raw, col, dtype), raw, roots)
    if section == "value_maps":
        vm = m.value_maps[name]
        given = _blank_is_null(pl.col(vm.source).cast(pl.String), pl.String())
        values = {k: str(v) for k, v in vm.values.items()}
        default = None if vm.default is None else str(vm.default)
        mapped = _blank_is_null(
            given.replace_strict(
                values, default=pl.lit(default, dtype=pl.String), return_dtype=pl.String
            ),
            pl.String(),
        )
        unmapped = given.is_not_null() & ~given.is_in(list(values)) if default is None else None
        return _Target(key, _coerce(mapped, col, pl.String()), mapped, roots, unmapped)
    expr = _sql(m.expressions[name], key)
    dtype = _dtype(source, key, expr)
    raw = _blank_is_null(expr, dtype)
    return _Target(key, _coerce(raw, col, dtype), raw, roots)


def _unread(name: str, t: _Target) -> tuple[pl.Expr, pl.Expr]:
    """Where this column's input has a value that it cannot read: the reason (else null) and
    the value."""
    none = pl.lit(None, dtype=pl.String)
    reason: Any = pl.when(pl.lit(False)).then(none)
    value: Any = pl.when(pl.lit(False)).then(none)
    if t.unmapped is not None:
        reason = reason.when(t.unmapped).then(pl.lit(f"{name}: not in {t.key}"))
        value = value.when(t.unmapped).then(pl.col(t.roots[0]).cast(pl.String))
    cannot = pl.lit(f"{name}: cannot read {'/'.join(t.roots) or 'value'}")
    if t.raw is not None:
        lost = t.raw.is_not_null() & t.value.is_null()
        reason = reason.when(lost).then(cannot)
        value = value.when(lost).then(t.raw.cast(pl.String))
    if not COLUMN_BY_NAME[name].nullable and t.roots:  # e.g. a TRY_CAST that failed
        lost = _from_values(t)
        reason = reason.when(lost).then(cannot)
        value = value.when(lost).then(pl.col(t.roots[0]).cast(pl.String))
    return reason, value


def _from_values(t: _Target) -> pl.Expr:
    """Rows where the mapping made NULL of inputs that all have values."""
    return t.value.is_null() & pl.all_horizontal([pl.col(r).is_not_null() for r in t.roots])


def _nulls_made(targets: dict[str, _Target]) -> list[pl.Expr]:
    """Per nullable column mapped from inputs: the rows it came out NULL of inputs with
    values (taken as "no value": reported, not rejected)."""
    return [
        _from_values(t).sum().alias(name)
        for name, t in targets.items()
        if COLUMN_BY_NAME[name].nullable and t.roots
    ]


def _rule_breaks(names: set[str]) -> tuple[pl.Expr, pl.Expr]:
    """Over the typed columns: the first of the log's row checks a row breaks (the reason,
    else null) and its value."""
    checks = row_checks(present=names)
    reasons = [pl.when(c.bad).then(pl.lit(f"{c.column}: {c.row}")) for c in checks]
    values = [pl.when(c.bad).then(pl.col(c.column).cast(pl.String)) for c in checks]
    return pl.coalesce(reasons), pl.coalesce(values)


def _sql(text: str, key: str) -> pl.Expr:
    try:
        return pl.sql_expr(text)
    except pl.exceptions.PolarsError as exc:
        raise MappingError(key, f"not a valid SQL expression: {exc}") from exc


def _derive(m: Mapping, source: pl.LazyFrame, hint: str) -> pl.LazyFrame:
    """Add the mapping's helper columns, checking that they read existing columns."""
    names = source.collect_schema().names()
    problems = []
    for name, text in m.derived.items():
        expr = _sql(text, f"derived.{name}")
        missing = [r for r in expr.meta.root_names() if r not in names]
        if missing:
            problems += [(f"derived.{name}", _not_in_input(r, hint)) for r in missing]
            continue
        source = source.with_columns(expr.alias(name))
        _dtype(source, f"derived.{name}", pl.col(name))
        names.append(name)
    if problems:
        raise ConfigError(problems, source="mapping, against its input")
    return source


def _not_in_input(column: str, hint: str) -> str:
    return f"source column {column!r} is not in the input{hint}"


def _source_problems(m: Mapping, m_targets: dict[str, str], schema: pl.Schema, hint: str) -> None:
    """Every mapped source column that the input lacks, at once."""
    problems: list[tuple[str, str]] = []
    for name, section in m_targets.items():
        key, roots = _sources(name, section, m)
        problems += [(key, _not_in_input(r, hint)) for r in roots if r not in schema]
    for c in m.passthrough.columns:
        if c in COLUMN_BY_NAME:
            problems.append(("passthrough.columns", f"{c!r} is a schema column; map it instead"))
        elif c not in schema:
            problems.append(("passthrough.columns", _not_in_input(c, hint)))
    if problems:
        raise ConfigError(problems, source="mapping, against its input")


def _culprit(source: pl.LazyFrame, targets: dict[str, _Target], exc: Exception) -> MappingError:
    """The key whose expression stops the import, with a value of its input."""
    for t in targets.values():
        try:
            source.select(t.value).collect()
        except pl.exceptions.PolarsError as own:
            example = (
                source.select(pl.col(t.roots[0]).drop_nulls().first()).collect().item()
                if t.roots
                else None
            )
            value = f" (input e.g. {t.roots[0]} = {example!r})" if t.roots else ""
            cast = "cast" in str(own).lower() or "conversion" in str(own).lower()
            tip = (
                "; use TRY_CAST, not CAST, so that rows with bad values are rejected and "
                "reported instead of stopping the import"
                if cast
                else ""
            )
            return MappingError(t.key, f"{first_line(own)}{value}{tip}")
    return MappingError("mapping", first_line(exc))


def import_log(
    mapping: Mapping,
    inputs: Sequence[Path],
    out: Path,
    *,
    max_rejected_pct: float = 1.0,
    dedupe: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> ImportReport:
    """Import ``inputs`` through ``mapping`` into ``out`` (Parquet, in replay order).

    Raises:
        MappingError: an input is missing, empty or has no rows, or an expression does not
            parse or stops on a value.
        ConfigError: mapped source columns absent from the input (all of them, at once).
        TooManyRejected: more than ``max_rejected_pct`` percent of the rows were rejected.
    """
    if not inputs:
        raise MappingError("input", "no input files given")
    paths = [Path(p) for p in inputs]
    scans = [scan_input(p, mapping.source) for p in paths]
    hint = next((h for p in paths if (h := separator_hint(p, mapping.source))), "")
    source = pl.concat(scans, how="diagonal_relaxed")
    targets_of = mapping.targets()
    source = _derive(mapping, source, hint)
    schema = source.collect_schema()
    _source_problems(mapping, targets_of, schema, hint)
    targets = {name: _target(name, sec, mapping, source) for name, sec in targets_of.items()}
    unread = [_unread(name, t) for name, t in targets.items()]
    try:
        frame = (
            source.with_columns(
                pl.coalesce([r for r, _ in unread]).cast(pl.String).alias(REASON),
                pl.coalesce([v for _, v in unread]).cast(pl.String).alias(VALUE),
            )
            .with_columns([t.value.alias(f"__t_{n}") for n, t in targets.items()])
            .collect()
        )
    except pl.exceptions.PolarsError as exc:
        raise _culprit(source, targets, exc) from exc
    _refuse_files_without_rows(paths, frame)
    keep = [*mapping.passthrough.columns, FILE, LINE, REASON, VALUE]
    columns = [pl.col(f"__t_{n}").alias(n) for n in targets] + [pl.col(c) for c in keep]
    typed = conform(frame.lazy().select(columns)).collect()
    broken, broken_value = _rule_breaks(set(targets))
    typed = typed.with_columns(
        pl.coalesce(pl.col(REASON), broken).alias(REASON),
        pl.coalesce(pl.col(VALUE), broken_value).alias(VALUE),
    )
    failed = pl.col(REASON).is_not_null()
    made = _nulls_made(targets)
    nulls = frame.filter(pl.col(REASON).is_null()).select(made).row(0, named=True) if made else {}
    bad = typed.filter(failed).select(FILE, LINE, REASON, pl.col(REASON).alias(RULE), VALUE)
    good = validate_log(typed.filter(~failed).drop(REASON, VALUE), whole_requests=False)
    admitted = admit(good, LINE, dedupe=dedupe, limits=limits)
    why = [FILE, LINE, REASON, RULE, VALUE]
    refused = admitted.rejected.with_columns(pl.lit(None, dtype=pl.String).alias(VALUE))
    reasons = pl.concat([bad, refused.select(why)]).sort([FILE, LINE])
    source_rows = frame.select([c for c in schema.names() if c not in (REASON, VALUE)])
    rejected = reasons.join(source_rows, on=[FILE, LINE], how="left", maintain_order="left")
    log = admitted.rows.drop(FILE, LINE)
    report = ImportReport(
        inputs=[str(p) for p in paths],
        rows_read=len(frame),
        rows_written=len(log),
        rows_rejected=len(rejected),
        reasons=_reasons(rejected),
        out=str(out),
        max_rejected_pct=max_rejected_pct,
        nulls={name: (n, targets[name].key) for name, n in nulls.items() if n},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    report.rejects = _write_rejects(rejected, out)
    if report.rejected_pct > max_rejected_pct:
        out.unlink(missing_ok=True)  # never leave an older log where this one was asked for
        report.rows_written = 0
        raise TooManyRejected(report)
    write_log(log, out)
    report.warnings = log_warnings(log)
    return report


def _refuse_files_without_rows(paths: list[Path], frame: pl.DataFrame) -> None:
    present = set(frame[FILE].unique().to_list())
    for p in paths:
        if str(p) not in present:
            raise MappingError("input", f"{p} has no data rows (a header only)")


def _reasons(rejected: pl.DataFrame) -> list[RejectReason]:
    if rejected.is_empty():
        return []
    top = (
        rejected.group_by(RULE, maintain_order=True)
        .agg(
            pl.len().alias("rows"),
            pl.col(FILE).first(),
            pl.col(LINE).first(),
            pl.col(REASON).first(),
            pl.col(VALUE).first(),
        )
        .sort("rows", descending=True, maintain_order=True)
    )
    out = []
    for rule, rows, file, line, reason, value in top.iter_rows():
        example = reason if value is None else f"{reason}: {value!r}"
        out.append(RejectReason(rule, rows, file, int(line), example))
    return out


def _write_rejects(rejected: pl.DataFrame, out: Path) -> str | None:
    path = out.with_name(out.name + ".rejects.parquet")
    if rejected.is_empty():
        path.unlink(missing_ok=True)
        return None
    rejected.write_parquet(path)
    return str(path)
