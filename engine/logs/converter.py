"""The spool converter: a low-priority process beside each worker that turns its finalised
spool files (engine/logs/spool.py) into the Parquet decision log (docs/loop.md).

Each spool file becomes one Parquet file of the same name (``decisions-<UTC start>-<host>-
<pid>-<n>.parquet``), written as ``.partial`` and renamed when complete, then the spool file is
deleted. The requests are decoded by the server's own decoding (engine/rpc/decode.py), the rows
built by ``decision_frame``. The process has one thread at the lowest CPU priority
(SCHED_IDLE), and before each chunk of records it waits until the machine has idle CPU
(``IdleGate``): under full load the workers keep the CPU and the spool grows (up to
``decision_log.spool_gb``, then the workers drop and count); it catches up when the load falls.
When its worker stops it finishes at once. ``admatch logs join`` converts what is pending first
(``convert_pending``).

It converts its worker's files and adopts those of a worker that died on this host (its open
file too: a crash loses only the records not yet written). A file is converted under an
exclusive ``flock``, so two converters never write the same one. A file that cannot be written
(the log directory is not writable, the disk is full) stays in the spool and is tried again;
each failure is reported. It reports to its worker by JSON lines on stdout and stops, after a
last pass, when its stdin closes (its worker stopped or died).

The process is ``python -m engine.logs.convert_main`` (its settings a JSON line on stdin),
which imports this module only once there is idle CPU to convert with.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from admatch.v1 import admatch_pb2 as pb
from engine.config import ServerConfig
from engine.logs.decisions import (
    DECISION_SCHEMA,
    DECISIONS,
    META_KEY,
    VERSION,
    arrow_schema,
    decision_frame,
)
from engine.logs.names import PARTIAL, takes, writer_of
from engine.logs.spool import Record, read
from engine.logs.stream import (
    ParquetFormat,
    Status,
    StreamStats,
    delete_beyond,
    open_directory,
)
from engine.rpc.decode import decode_request
from engine.rpc.limits import Limits
from engine.scoring.types import ScoreRequest

log = logging.getLogger(__name__)
KIND = DECISIONS
CHUNK = 256  # records converted at once (a row group)


@dataclass(frozen=True)
class ConverterSettings:
    """What one converter converts, and where to."""

    spool: str  # local directory of the spool files
    out: str  # the decision log's directory (any pyarrow filesystem URI)
    worker: int  # the pid of the worker whose files it converts (0: every finalised file)
    retention_days: float
    retention_bytes: int
    server: dict[str, Any]  # the server's config (its limits decode the requests)
    poll_s: float = 0.2


class Conversion:
    """The converter's work, one pass at a time (``run_pass``); transport-free for tests."""

    def __init__(
        self,
        settings: ConverterSettings,
        report: Callable[[dict[str, Any]], None],
        gate: Callable[[], None] = lambda: None,
    ):
        """``gate``: called before each chunk; returns when the converter may use the CPU."""
        self.settings = settings
        self.gate = gate
        self.report = report
        self.limits = Limits.from_config(ServerConfig.model_validate(settings.server))
        self.host = socket.gethostname()
        self.fs, self.root = open_directory(settings.out)
        self.spool = Path(settings.spool)
        self.failed = False  # the last pass could not write a file

    def run_pass(self) -> int:
        """Convert every file that is this converter's to convert now; how many (``failed``
        says whether one could not be written)."""
        done = 0
        self.failed = False
        try:
            names = sorted(os.listdir(self.spool))
        except FileNotFoundError:
            return 0
        for name in names:
            if not takes(name, self.host, self.settings.worker):
                continue
            path = self.spool / name
            if name.endswith(PARTIAL):
                try:  # a dead worker's open file: what it wrote is complete records
                    os.rename(path, path.with_name(name.removesuffix(PARTIAL)))
                except FileNotFoundError:
                    continue  # another converter took it
                path = path.with_name(name.removesuffix(PARTIAL))
            done += self._convert(path)
        return done

    def _convert(self, path: Path) -> int:
        """Convert one spool file under an exclusive lock; 1 when converted."""
        try:
            source = open(path, "rb")  # noqa: SIM115  # held, locked, through the conversion
        except FileNotFoundError:
            return 0
        with source:
            try:
                # the join's pass waits for a file a converter is writing (its rows must be
                # in the join); converters leave it to each other
                join_pass = not self.settings.worker
                fcntl.flock(source, fcntl.LOCK_EX | (0 if join_pass else fcntl.LOCK_NB))
                if os.stat(path).st_ino != os.fstat(source.fileno()).st_ino:
                    return 0  # converted and deleted meanwhile (a new file has its name)
            except (BlockingIOError, FileNotFoundError):
                return 0  # another converter has it
            try:
                rows, items, dropped = self._write(path, source)
            except Exception as exc:  # the log directory is not writable, a full disk...
                self.report({"error": f"{type(exc).__name__}: {exc}", "file": path.name})
                self.failed = True
                return 0
            os.unlink(path)
        self.report({"file": path.name, "rows": rows, "items": items, "dropped": dropped})
        self._retain()
        return 1

    def _write(self, path: Path, source: Any) -> tuple[int, int, int]:
        """Write ``path``'s records as one Parquet file, ``CHUNK`` records per row group,
        waiting before each chunk for idle CPU (``gate``)."""
        self.fs.create_dir(self.root, recursive=True)
        target = f"{self.root.rstrip('/')}/{path.stem}.parquet"
        host, pid = writer_of(path.name) or ("", 0)
        worker = f"{host}:{pid}"  # the writer's name, as its rows say
        decoded: ParquetFormat[tuple[ScoreRequest, Record]] = ParquetFormat(
            arrow_schema(DECISION_SCHEMA),
            lambda pairs: decision_frame([q for q, _ in pairs], [r for _, r in pairs], worker),
        )
        rows = items = dropped = 0
        with self.fs.open_output_stream(target + PARTIAL) as sink:
            writer = decoded.open(sink, {META_KEY.encode(): f"{KIND}/{VERSION}".encode()})
            records = read(source)
            while chunk := list(islice(records, CHUNK)):
                self.gate()
                pairs = []
                for record in chunk:
                    try:
                        wire = pb.ScoreRequest.FromString(record.wire)
                        pairs.append((decode_request(wire, self.limits), record))
                    except Exception as exc:  # the server decoded it: a corrupt record
                        dropped += 1
                        log.warning("%s: a record that does not decode: %s", path.name, exc)
                if pairs:
                    rows += writer.write(pairs)
                    items += len(pairs)
            writer.close()
        self.fs.move(target + PARTIAL, target)
        return rows, items, dropped

    def _retain(self) -> None:
        s = self.settings
        try:
            delete_beyond(self.fs, self.root, KIND, s.retention_days, s.retention_bytes)
        except OSError:
            pass


def convert_pending(directory: str, config: Any, spool: str | None = None) -> int:
    """Convert every finalised spool file of the decision log ``directory`` now (the join's
    first step, so that a day's decisions are all in the log however far the converters lag),
    and the open files of dead workers on this host; how many files. ``spool``: its spool
    (default: ``config``'s ``decision_log.spool_dir``, else ``<directory>/spool`` when local);
    ``config``: the server's ``AdmatchConfig`` (its limits decode the requests, its retention
    applies)."""
    c = config.decision_log
    spool = spool or c.spool_of(directory)
    if not spool:
        return 0
    settings = ConverterSettings(
        spool=os.path.abspath(spool),
        out=directory,
        worker=0,
        retention_days=c.retention_days,
        retention_bytes=int(c.retention_gb * 1024**3),
        server=config.server.model_dump(),
    )
    return Conversion(settings, lambda _report: None).run_pass()


class Converter:
    """A worker's handle on its converter process: starts it, reads its reports into ``stats``
    and tells listeners when writing fails or works again."""

    def __init__(self, settings: ConverterSettings, wait_s: float = 60.0) -> None:
        self.stats = StreamStats()
        self.status = Status(self.stats, "decision log")
        self.wait_s = wait_s
        env = {**os.environ, "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.logs.convert_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(asdict(settings)) + "\n")
        self.process.stdin.flush()
        self._reader = threading.Thread(target=self._read, name="admatch-converter", daemon=True)
        self._reader.start()

    def listen(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(healthy)`` when converting starts failing or works again."""
        self.status.listen(on_change)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            if "error" in report:
                self.stats.failures += 1
                self.status.fail(
                    f"cannot convert {report['file']} ({report['error']}): kept in the spool, "
                    "tried again"
                )
                continue
            self.stats.rows += report["rows"]
            self.stats.items += report["items"]
            self.stats.dropped += report["dropped"]
            self.stats.files += 1
            self.status.recover("converting again")

    def close(self) -> None:
        """Let it convert what is finalised and stop (waiting up to ``wait_s``; after that it
        finishes on its own)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(self.wait_s)
        except subprocess.TimeoutExpired:
            log.warning("decision log: the converter still works on the spool; left to finish")
            return
        self._reader.join(5)
