"""Reading the input files of an import: CSV (its separator from the mapping, the suffix or the
header) or Parquet, each row numbered by its line; files that hold no rows are refused by name.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.errors import MappingError
from engine.logs.mapping import Source

FILE, LINE = "source_file", "source_line"
SUFFIX_SEPARATORS = {".tsv": "\t", ".tab": "\t", ".psv": "|"}
SNIFFED = (",", "\t", ";", "|")  # the separators a header line is tried with
_NAMES = {",": "','", "\t": "tab ('\\t')", ";": "';'", "|": "'|'"}


def separator_name(sep: str) -> str:
    """A separator as an error message names it."""
    return _NAMES.get(sep, repr(sep))


def input_format(path: Path, source: Source) -> str:
    """``csv`` or ``parquet``: the mapping's, else the file's suffix."""
    return source.format or ("parquet" if path.suffix == ".parquet" else "csv")


def header_line(path: Path) -> str:
    """The first line of a text file ('' for an empty one)."""
    with path.open("rb") as f:
        return f.readline(1 << 20).decode("utf-8", "replace").rstrip("\r\n")


def csv_separator(path: Path, source: Source) -> str:
    """The mapping's separator; else the suffix's (``.tsv``: tab); else the one of
    :data:`SNIFFED` the header line splits on most (a comma when none does)."""
    if source.separator is not None:
        return source.separator
    if path.suffix.lower() in SUFFIX_SEPARATORS:
        return SUFFIX_SEPARATORS[path.suffix.lower()]
    header = header_line(path)
    counts = {sep: header.count(sep) for sep in SNIFFED}
    best = max(SNIFFED, key=lambda s: counts[s])
    return best if counts[best] else ","


def separator_hint(path: Path, source: Source) -> str:
    """When a mapped column is missing from a CSV: a hint if its header splits better on
    another separator than the one used (empty otherwise)."""
    if input_format(path, source) != "csv":
        return ""
    used = csv_separator(path, source)
    header = header_line(path)
    counts = {sep: header.count(sep) for sep in SNIFFED if sep != used}
    best = max(counts, key=lambda s: counts[s]) if counts else used
    if counts.get(best, 0) > header.count(used):
        return (
            f" (the header of {path} looks {separator_name(best)}-separated, read with "
            f"{separator_name(used)}: set [source] separator = {best!r})"
        )
    return ""


def scan_input(path: Path, source: Source) -> pl.LazyFrame:
    """One input as a lazy frame of its own columns plus ``source_file`` and ``source_line``
    (1-based data row). CSV fields are all read as text, so each conversion is explicit.

    Raises:
        MappingError: the file is missing, empty, or not readable in its format.
    """
    if not path.exists():
        raise MappingError("input", f"file not found: {path}")
    if path.is_dir():
        raise MappingError("input", f"{path} is a directory, not a file")
    fmt = input_format(path, source)
    if fmt == "csv" and path.stat().st_size == 0:
        raise MappingError("input", f"{path} is empty: no header, no rows")
    try:
        if fmt == "parquet":
            lf = pl.scan_parquet(path)
        else:
            lf = pl.scan_csv(
                path,
                infer_schema=False,
                separator=csv_separator(path, source),
                null_values=source.null_values or None,
            )
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise MappingError("input", f"cannot read {path} as {fmt}: {first_line(exc)}") from exc
    return lf.with_row_index(LINE, offset=1).with_columns(pl.lit(str(path)).alias(FILE))


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its name when it has none)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
