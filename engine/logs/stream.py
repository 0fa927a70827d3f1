"""A log stream: rows appended to rotating Parquet files by a background thread, never blocking
the caller (the decision and event logs of the service, docs/loop.md).

``put(item)`` hands an item (a request's decision, a batch of events) to a bounded queue and
returns at once; when the queue is full the item is dropped and counted, never waited for. The
stream's thread takes what is queued, turns it into rows (``build``, off the request path), and
appends them to the open file (``<kind>-<UTC start>-<host>-<pid>-<n>.parquet.partial``, a row
group per write). A file is finalised, closed and renamed to ``.parquet`` in one step, when it
has been open ``rotate_s`` seconds or has grown past ``rotate_bytes``, and when the stream
closes. Only finalised files are read by anyone, so a crash (kill -9) loses at most the open
file and the queue: the decisions of the last ``rotate_s`` seconds (or ``rotate_bytes``).
After each finalisation the stream deletes its kind's oldest files beyond ``retention_days`` or
``retention_bytes`` (every stream of the directory counts; the newest file always stays). The
directory is any pyarrow filesystem URI (a local path, ``s3://``, ``gs://``, ``hdfs://``...);
one stream per worker.

A directory that cannot be written (permissions, a full disk) does not stop the service: the
rows are dropped and counted, the stream warns once (and once again when it writes again), and
``healthy`` says so until a write succeeds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.logs.names import PARTIAL

log = logging.getLogger(__name__)
T = TypeVar("T")
_IDLE_S = 0.2  # the writer takes what is queued this often
_BATCH = 512  # items written at once at most


@dataclass(frozen=True)
class StreamSettings:
    """Where and how a stream writes (config ``[decision_log]``)."""

    directory: str
    rotate_s: float = 60.0
    rotate_bytes: int = 64 * 1024 * 1024
    queue_items: int = 10_000
    retention_days: float = 30.0
    retention_bytes: int = 10 * 1024**3
    # keep every file (someone else consumes and deletes them) and stop writing, dropping and
    # counting, while the kind's files total more than ``retention_bytes``
    keep_all: bool = False


@dataclass
class StreamStats:
    """What a stream did so far."""

    rows: int = 0  # written to files
    items: int = 0  # queued items written
    dropped: int = 0  # items dropped: the queue was full, or the write failed
    files: int = 0  # finalised
    failures: int = 0  # writes that failed
    healthy: bool = True  # the last write succeeded


class Status:
    """A writer's health and warnings: listeners hear when it starts failing or works again;
    a problem is logged once, then not again until it has said it works again."""

    def __init__(self, stats: StreamStats, prefix: str) -> None:
        self.stats, self.prefix = stats, prefix
        self._listeners: list[Callable[[bool], None]] = []
        self._warned = False

    def listen(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(healthy)`` when writing starts failing or works again."""
        self._listeners.append(on_change)

    def warn(self, problem: str) -> None:
        """Log ``problem``, unless a problem was logged since the last recovery."""
        if not self._warned:
            self._warned = True
            log.warning("%s: %s", self.prefix, problem)

    def fail(self, problem: str) -> None:
        """Writing failed: unhealthy, ``problem`` logged (once)."""
        self._set(False)
        self.warn(problem)

    def recover(self, news: str, healthy: bool = True) -> None:
        """Log ``news`` if a problem was logged (and warn again next time); ``healthy``."""
        if self._warned:
            log.warning("%s: %s", self.prefix, news)
            self._warned = False
        self._set(healthy)

    def _set(self, healthy: bool) -> None:
        if healthy != self.stats.healthy:
            self.stats.healthy = healthy
            for listener in self._listeners:
                listener(healthy)


class FileWriter(Protocol[T]):
    """One open file of a stream."""

    def write(self, items: list[T]) -> int:
        """Append ``items``; the rows written."""
        ...

    def close(self) -> None:
        """Finish the file (its sink is closed by the stream)."""
        ...


class FileFormat(Protocol[T]):
    """How a stream writes its files: their extension, and a writer per file."""

    extension: str

    def open(self, sink: Any, metadata: dict[bytes, bytes]) -> FileWriter[T]:
        """A writer of a new file into ``sink`` (a pyarrow output stream)."""
        ...


class ParquetFormat(Generic[T]):
    """Parquet files of ``schema``, a row group per write of ``build(items)``."""

    extension = "parquet"

    def __init__(self, schema: pa.Schema, build: Callable[[list[T]], pl.DataFrame]) -> None:
        self.schema, self.build = schema, build

    def open(self, sink: Any, metadata: dict[bytes, bytes]) -> _ParquetWriter[T]:
        schema = self.schema.with_metadata({**(self.schema.metadata or {}), **metadata})
        # snappy: ~30% cheaper to write than zstd here, for ~10% bigger files (BENCHMARKS.md)
        return _ParquetWriter(self, pq.ParquetWriter(sink, schema, compression="snappy"))


@dataclass
class _ParquetWriter(Generic[T]):
    format: ParquetFormat[T]
    writer: pq.ParquetWriter

    def write(self, items: list[T]) -> int:
        table = self.format.build(items).to_arrow().cast(self.format.schema)
        self.writer.write_table(table)
        return int(table.num_rows)

    def close(self) -> None:
        self.writer.close()


def open_directory(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it (a local path without a scheme)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def finalised(
    fs: pafs.FileSystem, root: str, kind: str, extension: str = "parquet"
) -> list[pafs.FileInfo]:
    """The finalised files of ``kind`` under ``root``, oldest first (by name: kind, then the
    UTC time it was opened).

    Raises:
        OSError: the directory cannot be listed.
    """
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    mine = (i for i in infos if i.base_name.startswith(f"{kind}-") and i.extension == extension)
    return sorted(mine, key=lambda i: i.base_name)


def delete_beyond(
    fs: pafs.FileSystem,
    root: str,
    kind: str,
    days: float,
    limit: int,
    now: float | None = None,
    files: list[pafs.FileInfo] | None = None,
) -> None:
    """Delete ``kind``'s oldest finalised Parquet files older than ``days`` or beyond ``limit``
    bytes in all (the newest file always stays; ``files``: the listing, when made already).

    Raises:
        OSError: the directory cannot be listed.
    """
    mine = finalised(fs, root, kind) if files is None else files
    cutoff = (time.time() if now is None else now) - days * 86_400
    total = sum(i.size or 0 for i in mine)
    for info in mine[:-1]:  # the newest file stays, whatever the limits
        old = info.mtime is not None and info.mtime.timestamp() < cutoff
        if not old and total <= limit:
            break
        try:
            fs.delete_file(info.path)
        except OSError:
            continue  # another worker's stream deleted it first
        total -= info.size or 0


@dataclass
class _File:
    path: str
    writer: FileWriter[Any]
    sink: Any
    opened: float
    bytes: int = 0


@dataclass
class LogStream(Generic[T]):
    """One worker's stream of one kind of log (see the module doc)."""

    kind: str
    format: FileFormat[T]
    settings: StreamSettings
    metadata: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    stats: StreamStats = field(default_factory=StreamStats)

    def __post_init__(self) -> None:
        self.fs, self.root = open_directory(self.settings.directory)
        # a plain deque, not a queue.Queue: a Queue's put wakes the writer for every item,
        # which made the request threads hand the GIL to it once per request
        self._items: deque[T] = deque()
        self._closing = threading.Event()
        self._file: _File | None = None
        self._seq = 0
        self._full = False  # keep_all: the kind's files are over their limit
        self.status = Status(self.stats, f"{self.kind} log {self.settings.directory}")
        self._name = f"{socket.gethostname()}-{os.getpid()}"
        self._thread = threading.Thread(target=self._run, name=f"admatch-{self.kind}-log")
        self._thread.daemon = True
        self._thread.start()

    def put(self, item: T) -> bool:
        """Queue ``item`` for writing; ``False`` (and counted) when the queue is full (or,
        ``keep_all``, the files are over their limit)."""
        if self._full:
            self.stats.dropped += 1
            self.status.warn(f"over {self.settings.retention_bytes} bytes of files: items dropped")
            return False
        if len(self._items) >= self.settings.queue_items:
            self.stats.dropped += 1
            self.status.warn("queue full (the writer falls behind): items dropped")
            return False
        self._items.append(item)  # atomic; the writer takes it within _IDLE_S
        return True

    def _run(self) -> None:
        done = False
        while not done:
            done = self._closing.wait(_IDLE_S)
            wrote = False
            while items := self._take():
                self._write(items)
                wrote = True
            if self._file is not None and (done or self._due()):
                self._finalise()
            elif self._full and not wrote:
                self._retain()  # has someone made room?

    def _take(self) -> list[T]:
        """Up to ``_BATCH`` of the queued items, oldest first."""
        items: list[T] = []
        while self._items and len(items) < _BATCH:
            items.append(self._items.popleft())
        return items

    def _due(self) -> bool:
        f = self._file
        assert f is not None
        s = self.settings
        return self.clock() - f.opened >= s.rotate_s or f.bytes >= s.rotate_bytes

    def listen(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(healthy)`` when writing starts failing or works again."""
        self.status.listen(on_change)

    def _write(self, items: list[T]) -> None:
        try:
            f = self._file or self._open()
            rows = f.writer.write(items)
            f.bytes = f.sink.tell()
        except Exception as exc:  # a full disk, no permission: count, say once, go on
            self.stats.dropped += len(items)
            self.stats.failures += 1
            self._abandon()
            self.status.fail(f"cannot write ({type(exc).__name__}: {exc}): items dropped")
            return
        self.stats.rows += rows
        self.stats.items += len(items)
        if not self.stats.healthy:
            self.status.recover("writing again")

    def _open(self) -> _File:
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S.%f")
        self._seq += 1
        name = f"{self.kind}-{stamp}-{self._name}-{self._seq}.{self.format.extension}{PARTIAL}"
        self.fs.create_dir(self.root, recursive=True)
        path = f"{self.root.rstrip('/')}/{name}"
        sink = self.fs.open_output_stream(path)
        try:
            writer = self.format.open(sink, self._meta())
        except Exception:
            sink.close()
            raise
        self._file = _File(path, writer, sink, self.clock())
        return self._file

    def _meta(self) -> dict[bytes, bytes]:
        return {k.encode(): v.encode() for k, v in self.metadata.items()}

    def _finalise(self) -> None:
        f, self._file = self._file, None
        assert f is not None
        try:
            f.writer.close()
            f.sink.close()
            self.fs.move(f.path, f.path.removesuffix(PARTIAL))
        except Exception as exc:
            self.stats.failures += 1
            self.status.fail(f"cannot finalise {f.path} ({type(exc).__name__}: {exc})")
            return
        self.stats.files += 1
        self._retain()

    def _abandon(self) -> None:
        """Drop the open file after a failed write (its rows are counted as dropped)."""
        f, self._file = self._file, None
        if f is None:
            return
        for close in (f.writer.close, f.sink.close, lambda: self.fs.delete_file(f.path)):
            try:
                close()
            except Exception:  # the file may be broken or gone: nothing more to save
                pass

    def _retain(self) -> None:
        """Delete this kind's oldest finalised files beyond the retention limits (``keep_all``:
        stop writing while they are over the size limit)."""
        s = self.settings
        try:
            mine = finalised(self.fs, self.root, self.kind, self.format.extension)
        except OSError:
            return
        if s.keep_all:
            full = sum(i.size or 0 for i in mine) > s.retention_bytes
            if self._full and not full:
                self.status.recover("room again, writing", self.stats.healthy)
            self._full = full
            return
        delete_beyond(
            self.fs, self.root, self.kind, s.retention_days, s.retention_bytes, self.clock(), mine
        )

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, finalise the open file, stop the thread."""
        self._closing.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():  # the writer is stuck: what is queued is lost
            self.status.warn(f"closed with {len(self._items)} items still queued")
