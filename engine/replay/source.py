"""A log as a stream of whole requests in timestamp order, in bounded memory.

:func:`prepare_log` turns any input into a Parquet log in the schema whose rows are ordered by
``(ts, request_id)`` with each request's rows together: a log that already is (the generator's
and most exports) is used as it is; any other is sorted once by polars' streaming engine into a
file in the work directory; a log in another format goes through its import mapping first.
:func:`iter_chunks` then reads it batch by batch (pyarrow), holds back the rows of the last
request of a batch until its next batch, and validates every chunk like any log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import LogSchemaError
from features.logio import conform, validate_log


@dataclass(frozen=True)
class RequestChunk:
    """Rows of whole requests, in order.

    Attributes:
        rows: the candidate rows in schema dtypes.
        bounds: row offsets of the requests, ``len == requests + 1`` (request ``i`` is
            ``rows[bounds[i]:bounds[i + 1]]``).
    """

    rows: pl.DataFrame
    bounds: np.ndarray

    @property
    def requests(self) -> int:
        """Number of requests in the chunk."""
        return len(self.bounds) - 1

    def owner(self) -> np.ndarray:
        """Per row, the index of its request within the chunk."""
        return np.repeat(np.arange(self.requests), np.diff(self.bounds))

    @classmethod
    def of(cls, rows: pl.DataFrame) -> RequestChunk:
        """The whole requests of ``rows`` (validated; in time order, each request's rows
        together).

        Raises:
            LogSchemaError: a row off the schema, out of time order, or a request split.
        """
        rows = validate_log(rows)
        bounds = request_bounds(rows)
        ts = rows["ts"].dt.epoch("us").to_numpy()
        if len(ts) > 1 and (np.diff(ts) < 0).any():
            raise LogSchemaError("ts", "not in time order: prepare the log for replay first")
        if rows["request_id"][bounds[:-1]].n_unique() != len(bounds) - 1:
            raise LogSchemaError("request_id", "a request's rows are not together in the log")
        return cls(rows, bounds)

    def head(self, requests: int) -> RequestChunk:
        """The first ``requests`` requests."""
        return self.slice(0, requests)

    def slice(self, start: int, end: int) -> RequestChunk:
        """Requests ``start`` to ``end`` (exclusive)."""
        lo, hi = int(self.bounds[start]), int(self.bounds[end])
        return RequestChunk(self.rows.slice(lo, hi - lo), self.bounds[start : end + 1] - lo)


def request_bounds(rows: pl.DataFrame) -> np.ndarray:
    """Row offsets of the runs of one ``request_id`` (``len == runs + 1``)."""
    starts = rows.select((pl.col("request_id") != pl.col("request_id").shift(1)).fill_null(True))
    return np.append(np.flatnonzero(starts.to_series().to_numpy()), len(rows))


def prepare_log(path: Path, workdir: Path, mapping: str | None = None) -> Path:
    """A Parquet log in the schema, ordered for replay (see the module doc).

    Args:
        path: the log (Parquet or Arrow IPC in the schema, or any input of ``mapping``).
        workdir: where an imported or sorted copy is written when one is needed.
        mapping: an import mapping (file or built-in name) for logs in another format.

    Raises:
        LogSchemaError: the log is missing, or a column is missing or mistyped.
        MappingError: the mapping does not fit the input.
    """
    if not path.exists():
        raise LogSchemaError("log", f"file not found: {path}")
    if mapping is not None:
        from engine.logs.importer import import_log
        from engine.logs.mapping import load_mapping

        imported = workdir / "imported.parquet"
        import_log(load_mapping(mapping), [path], imported)
        path = imported
    lf = _scan(path)
    conform(lf)  # dtype errors now, before any work
    if _in_replay_order(lf):
        return path
    ordered = workdir / "ordered.parquet"
    lf.sort(["ts", "request_id"], maintain_order=True).sink_parquet(ordered)
    return ordered


def _scan(path: Path) -> pl.LazyFrame:
    return pl.scan_ipc(path) if path.suffix in {".arrow", ".ipc"} else pl.scan_parquet(path)


def _in_replay_order(lf: pl.LazyFrame) -> bool:
    """Timestamps non-decreasing and each request's rows contiguous (one run per id)."""
    check = lf.select(
        (pl.col("ts").diff().dt.total_microseconds().fill_null(0) >= 0).all().alias("ordered"),
        (pl.col("request_id") != pl.col("request_id").shift(1)).fill_null(True).sum().alias("runs"),
        pl.col("request_id").n_unique().alias("ids"),
    ).collect(engine="streaming")
    row = check.row(0, named=True)
    return bool(row["ordered"]) and row["runs"] == row["ids"]


def count_rows(path: Path) -> int:
    """Rows of a prepared log (from the Parquet footer: no data read)."""
    if path.suffix in {".arrow", ".ipc"}:
        return int(pl.scan_ipc(path).select(pl.len()).collect().item())
    return int(pq.ParquetFile(path).metadata.num_rows)


def iter_chunks(path: Path, batch_rows: int = 65_536) -> Iterator[RequestChunk]:
    """Whole requests of a prepared log, about ``batch_rows`` rows at a time.

    At most one batch plus one request's rows are held at once.

    Raises:
        LogSchemaError: a chunk breaks the schema (naming the column), or the log is not in
            replay order (use :func:`prepare_log`).
    """
    carry: pl.DataFrame | None = None
    for frame in _batches(path, batch_rows):
        rows = frame if carry is None else pl.concat([carry, frame], how="vertical_relaxed")
        ids = rows["request_id"]
        last = ids[len(ids) - 1]
        cut = len(rows) - int((ids == last).sum())
        if cut == 0:  # the whole batch is one request: keep reading
            carry = rows
            continue
        carry = rows.slice(cut)
        yield RequestChunk.of(rows.head(cut))
    if carry is not None and len(carry):
        yield RequestChunk.of(carry)


def _batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    if path.suffix in {".arrow", ".ipc"}:  # memory-mapped: slices cost no copy
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        batches = (
            b.slice(k, batch_rows)
            for i in range(reader.num_record_batches)
            for b in [reader.get_batch(i)]
            for k in range(0, b.num_rows, batch_rows)
        )
    else:
        # buffered reads, no pre-buffering of whole row groups, one thread: about half the
        # peak memory of the defaults (a row group's pages, not the group, are held)
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        batches = parquet.iter_batches(batch_size=batch_rows, use_threads=False)
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield frame
