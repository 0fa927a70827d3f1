"""The log stream under the decision and event logs (issue 17, items 2-3): rotation, atomic
finalisation, retention, a full queue and an unwritable directory, never blocking."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.logs.stream import LogStream, ParquetFormat, StreamSettings

SCHEMA = pl.Schema({"k": pl.Int64, "name": pl.String})


def frame(items: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"k": items, "name": [f"n{i}" for i in items]}, schema=SCHEMA)


def stream(directory: Path, clock=time.time, build=frame, **kw: object) -> LogStream[int]:
    settings = StreamSettings(str(directory), **kw)  # type: ignore[arg-type]
    arrow: pa.Schema = pl.DataFrame(schema=SCHEMA).to_arrow().schema
    return LogStream(
        "test", ParquetFormat(arrow, build), settings, {"admatch.log": "test/1"}, clock
    )


def finalised(directory: Path) -> list[Path]:
    return sorted(directory.glob("test-*.parquet"))


def read(directory: Path) -> list[int]:
    return sorted(pl.concat([pl.read_parquet(p) for p in finalised(directory)])["k"].to_list())


def wait_for(condition, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    assert condition()


def test_rows_reach_finalised_files_when_the_stream_closes(tmp_path: Path) -> None:
    s = stream(tmp_path)
    for i in range(1000):
        assert s.put(i)
    s.close()
    assert read(tmp_path) == list(range(1000))
    assert not list(tmp_path.glob("*.partial"))
    meta = pq.read_schema(finalised(tmp_path)[0]).metadata
    assert meta[b"admatch.log"] == b"test/1"
    assert (s.stats.rows, s.stats.items, s.stats.dropped, s.stats.files) == (1000, 1000, 0, 1)


def test_files_rotate_by_time_and_size_and_only_finalised_ones_are_complete(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    s = stream(tmp_path, clock=lambda: now[0], rotate_s=10.0)
    s.put(1)
    wait_for(lambda: s.stats.rows == 1)
    assert finalised(tmp_path) == [] and len(list(tmp_path.glob("*.partial"))) == 1
    now[0] += 11  # the open file is due: the next pass finalises it
    wait_for(lambda: len(finalised(tmp_path)) == 1)
    s.put(2)
    wait_for(lambda: s.stats.rows == 2)
    s.close()
    assert len(finalised(tmp_path)) == 2 and read(tmp_path) == [1, 2]
    sized = stream(tmp_path / "sized", rotate_bytes=1)
    for i in range(5):
        sized.put(i)
        wait_for(lambda i=i: sized.stats.files == i + 1)
    sized.close()
    assert len(finalised(tmp_path / "sized")) == 5


def test_retention_deletes_the_oldest_files(tmp_path: Path) -> None:
    s = stream(tmp_path, rotate_bytes=1, retention_bytes=1)  # keep the newest file only
    for i in range(4):
        s.put(i)
        wait_for(lambda i=i: s.stats.files == i + 1)
    s.close()
    files = finalised(tmp_path)
    assert len(files) == 1 and read(tmp_path) == [3]
    (tmp_path / "old").mkdir()
    old = stream(tmp_path / "old", rotate_bytes=1, retention_days=1.0)
    (tmp_path / "old" / "test-19990101T000000.000000-x-1-1.parquet").write_bytes(b"old")
    os.utime(tmp_path / "old" / "test-19990101T000000.000000-x-1-1.parquet", (0, 0))
    old.put(1)
    wait_for(lambda: old.stats.files == 1)
    old.close()
    assert [p.name.startswith("test-1999") for p in finalised(tmp_path / "old")] == [False]


def test_a_full_queue_drops_and_counts_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> pl.DataFrame:
        gate.wait(10)
        return frame(items)

    s = stream(tmp_path, build=slow, queue_items=5)
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        accepted = [s.put(i) for i in range(100)]
        assert time.monotonic() - start < 1.0  # never waited
    assert sum(accepted) <= 6 + 512 and s.stats.dropped == 100 - sum(accepted)
    assert s.stats.dropped > 0
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1  # warned once
    gate.set()
    s.close()
    assert s.stats.rows == sum(accepted)


def test_an_unwritable_directory_drops_warns_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() == 0:  # root writes anywhere: a file where the directory should be
        target = tmp_path / "blocked"
        target.write_text("not a directory")
    else:
        target = tmp_path / "readonly"
        target.mkdir()
        target.chmod(0o500)
    s = stream(target)
    changes: list[bool] = []
    s.listen(changes.append)
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            s.put(i)
            wait_for(lambda i=i: s.stats.dropped == i + 1)
        assert not s.stats.healthy and changes == [False]
        assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1
        if target.is_file():
            target.unlink()
        else:
            target.chmod(0o700)
        s.put(9)
        wait_for(lambda: s.stats.rows == 1)
    assert s.stats.healthy and changes == [False, True]
    assert any("writing again" in r.getMessage() for r in caplog.records)
    s.close()
    assert read(target) == [9]
