"""Reading a log for replay: whole requests in time order, in bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.errors import LogSchemaError
from engine.replay.causal import causal_batches, previous_conflict
from engine.replay.requests import ChunkEvents, to_requests
from engine.replay.source import iter_chunks, prepare_log
from engine.synth.generator import GeneratedLog
from engine.synth.params import WorldParams
from features.logio import write_log


@pytest.fixture
def log_file(small_world: GeneratedLog, tmp_path: Path) -> Path:
    path = tmp_path / "log.parquet"
    write_log(small_world.log, path)
    return path


def test_chunks_hold_whole_requests_in_order(log_file: Path, tmp_path: Path) -> None:
    log = pl.read_parquet(log_file)
    prepared = prepare_log(log_file, tmp_path)
    assert prepared == log_file  # already in replay order: used as it is
    chunks = list(iter_chunks(prepared, batch_rows=997))
    assert len(chunks) > 10
    biggest_request = int(log.group_by("request_id").len()["len"].max())  # type: ignore[arg-type]
    seen = []
    for c in chunks:
        assert len(c.rows) <= 997 + biggest_request  # a batch plus one held-back request
        ids = c.rows["request_id"]
        assert ids[c.bounds[:-1]].n_unique() == c.requests
        for i in range(c.requests):
            part = ids[int(c.bounds[i]) : int(c.bounds[i + 1])]
            assert part.n_unique() == 1
        seen.append(ids)
    replayed = pl.concat(seen)
    assert replayed.equals(log["request_id"])  # every row once, in order
    assert replayed.rle_id().max() + 1 == log["request_id"].n_unique()  # no request split


def test_a_shuffled_log_is_sorted_first(log_file: Path, tmp_path: Path) -> None:
    shuffled = tmp_path / "shuffled.parquet"
    pl.read_parquet(log_file).sample(fraction=1.0, shuffle=True, seed=3).write_parquet(shuffled)
    prepared = prepare_log(shuffled, tmp_path)
    assert prepared != shuffled
    chunks = list(iter_chunks(prepared, batch_rows=5000))
    ts = np.concatenate([c.rows["ts"].dt.epoch("us").to_numpy() for c in chunks])
    assert (np.diff(ts) >= 0).all()
    assert sum(c.requests for c in chunks) == pl.read_parquet(log_file)["request_id"].n_unique()


def test_bad_logs_name_the_column(log_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    pl.read_parquet(log_file).drop("slot").write_parquet(broken)
    with pytest.raises(LogSchemaError) as err:
        prepare_log(broken, tmp_path)
    assert err.value.field == "slot"
    with pytest.raises(LogSchemaError) as err:
        prepare_log(tmp_path / "missing.parquet", tmp_path)
    assert "not found" in err.value.problem


def test_requests_and_events_match_the_rows(log_file: Path) -> None:
    chunk = next(iter_chunks(log_file, batch_rows=2000))
    requests = to_requests(chunk)
    assert len(requests) == chunk.requests
    first = requests[0]
    n = int(chunk.bounds[1])
    assert first.context.request_id == chunk.rows["request_id"][0]
    assert list(first.candidates["ad_id"]) == chunk.rows["ad_id"][:n].to_list()
    assert first.context.ts.tzinfo is not None
    events = ChunkEvents(chunk)
    shown = chunk.rows["shown"].to_numpy()
    impressions, feedback = events.rows(np.flatnonzero(shown))
    assert len(impressions) == int(shown.sum())
    rows = chunk.rows.filter("shown")
    assert len(feedback) == rows["negative_kind"].is_not_null().sum() + rows["converted"].sum()
    kinds = {f.kind for f in feedback}
    assert "conversion" in kinds and len(kinds) > 1
    imp = impressions[0]
    assert imp.impression_id == f"{imp.impression_id.split(':')[0]}:{imp.ad_id}"


def test_causal_batches_never_hold_one_user_twice(log_file: Path) -> None:
    requests = to_requests(next(iter_chunks(log_file, batch_rows=5000)))
    spans = causal_batches(requests, 32)
    assert [i for s in spans for i in s] == list(range(len(requests)))
    for s in spans:
        assert 1 <= len(s) <= 32
        users = [requests[i].context.user_id for i in s]
        households = [requests[i].context.household_id for i in s]
        assert len(set(users)) == len(users) and len(set(households)) == len(households)
    after = previous_conflict(requests)
    for i, j in enumerate(after):
        if j >= 0:
            assert j < i and requests[j].context.household_id == requests[i].context.household_id


# peak RSS of this process in KiB (VmHWM: unlike ru_maxrss, not inherited across exec)
PEAK = """
def PEAK():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""
STREAM_SCRIPT = (
    PEAK
    + """
import sys
from pathlib import Path
from engine.replay.source import iter_chunks
rows = 0
for chunk in iter_chunks(Path(sys.argv[1]), batch_rows=4096):
    rows += len(chunk.rows)
print(rows, PEAK())
"""
)
READ_ALL_SCRIPT = (
    PEAK
    + """
import sys
import polars as pl
from engine.replay import source
frame = pl.read_parquet(sys.argv[1])
print(len(frame), PEAK())
"""
)


def test_streaming_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    """Peak memory of a fresh process streaming a log is the same for 100k and 400k rows,
    while reading the log whole grows with it."""
    from engine.synth.generator import generate

    def peak(script: str, path: Path) -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
        )
        rows, kib = out.stdout.split()
        return int(rows), int(kib)

    paths = {}
    for n in (100_000, 400_000):
        paths[n] = tmp_path / f"log{n}.parquet"
        generate(WorldParams(rows=n, seed=2)).log.write_parquet(paths[n], row_group_size=50_000)
    small, large = (peak(STREAM_SCRIPT, paths[n]) for n in (100_000, 400_000))
    whole_small, whole_large = (peak(READ_ALL_SCRIPT, paths[n]) for n in (100_000, 400_000))
    assert large[0] == whole_large[0] == 400_000
    growth = whole_large[1] - whole_small[1]
    assert growth > 40_000  # KiB: the whole log costs memory in proportion
    assert large[1] - small[1] < growth / 4, (small, large, whole_small, whole_large)
