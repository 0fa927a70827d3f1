"""The decision spool and its converter (engine/logs/spool.py, converter.py): records read back
as written, torn tails and foreign files, dead workers' files adopted, one converter per file,
a log directory that cannot be written keeps the spool until it can."""

from __future__ import annotations

import fcntl
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from engine.config import load_config
from engine.logs.converter import Conversion, ConverterSettings
from engine.logs.decisions import DECISION_SCHEMA
from engine.logs.spool import FLOATS, MAGIC, Logged, decode, encode, read
from engine.scoring.jsonio import request_from_json
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, ScoreRequest

HOST = socket.gethostname()
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring" / "exemplary"


@pytest.fixture(scope="module")
def decided(scorer: Scorer) -> list[tuple[ScoreRequest, Decision]]:
    out = []
    for i, name in enumerate(("iot_idle_screen.json", "ott_preroll_pod.json")):
        doc = json.loads((GOLDEN / name).read_text())["request"]
        doc["request_id"] = f"r{i}"
        request = request_from_json(doc)
        out.append((request, scorer.score(request)))
    return out


def _spool(path: Path, items: list[Logged], torn: bytes = b"") -> None:
    path.write_bytes(MAGIC + b"".join(map(encode, items)) + torn)


def test_a_record_reads_back_as_written(decided: list[tuple[ScoreRequest, Decision]]) -> None:
    request, decision = decided[0]
    record = decode(encode(Logged(request, decision, True, 1234.5))[4:])
    assert record.at == 1234.5 and record.reserved
    assert record.model_version == decision.model_version
    assert record.selection_propensity == decision.selection_propensity
    assert np.array_equal(record.ints[:, 0], decision.rank)
    assert np.allclose(record.floats[:, 1], decision.p_engage)
    assert np.allclose(record.floats[:, len(FLOATS) :], decision.costs)
    assert np.array_equal(record.ints[:, 2], decision.reason_code)
    from admatch.v1 import admatch_pb2 as pb
    from engine.rpc.decode import decode_request

    again = decode_request(pb.ScoreRequest.FromString(record.wire))
    assert list(again.candidates["ad_id"]) == decision.ad_id


def test_a_torn_last_record_is_skipped_and_a_foreign_file_refused(
    decided: list[tuple[ScoreRequest, Decision]],
) -> None:
    items = [Logged(r, d, False, float(i)) for i, (r, d) in enumerate(decided)]
    whole = MAGIC + b"".join(map(encode, items))
    torn = whole + encode(items[0])[:-7]
    assert [r.at for r in read(io.BytesIO(torn))] == [0.0, 1.0]
    with pytest.raises(ValueError, match="not an admatch spool"):
        list(read(io.BytesIO(b"PAR1" + whole)))


def _settings(tmp_path: Path, worker: int) -> ConverterSettings:
    return ConverterSettings(
        spool=str(tmp_path / "spool"),
        out=str(tmp_path / "logs"),
        worker=worker,
        retention_days=30,
        retention_bytes=10**9,
        server=load_config().server.model_dump(),
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_own_files_convert_and_a_dead_workers_open_file_is_adopted(
    tmp_path: Path, decided: list[tuple[ScoreRequest, Decision]]
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    items = [Logged(r, d, False, 1.0) for r, d in decided]
    me, dead = os.getpid(), _dead_pid()
    _spool(spool / f"decisions-20260101T000000.000000-{HOST}-{me}-1.spool", items[:1])
    _spool(spool / f"decisions-20260101T000000.000000-{HOST}-{me}-2.spool.partial", items[:1])
    torn = encode(items[0])[:20]
    _spool(spool / f"decisions-20260101T000001.000000-{HOST}-{dead}-1.spool.partial", items, torn)
    reports: list[dict[str, Any]] = []
    assert Conversion(_settings(tmp_path, me), reports.append).run_pass() == 2
    assert sorted(p.name for p in spool.iterdir()) == [  # its own open file stays
        f"decisions-20260101T000000.000000-{HOST}-{me}-2.spool.partial"
    ]
    logs = sorted((tmp_path / "logs").glob("decisions-*.parquet"))
    assert [p.name.split("-")[-2] for p in logs] == [str(me), str(dead)]
    rows = pl.read_parquet(logs[1])
    assert rows.schema == DECISION_SCHEMA
    assert rows["request_id"].unique().sort().to_list() == ["r0", "r1"]
    assert [r["items"] for r in reports] == [1, 2]


def test_a_file_locked_by_another_converter_is_left_to_it(
    tmp_path: Path, decided: list[tuple[ScoreRequest, Decision]]
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    dead = _dead_pid()
    path = spool / f"decisions-20260101T000000.000000-{HOST}-{dead}-1.spool"
    _spool(path, [Logged(*decided[0], False, 1.0)])
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert Conversion(_settings(tmp_path, os.getpid()), print).run_pass() == 0
    assert Conversion(_settings(tmp_path, os.getpid()), print).run_pass() == 1


def test_an_unwritable_log_directory_keeps_the_spool_until_it_can_write(
    tmp_path: Path, decided: list[tuple[ScoreRequest, Decision]]
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "logs").write_text("a file where the log directory should be")
    me = os.getpid()
    path = spool / f"decisions-20260101T000000.000000-{HOST}-{me}-1.spool"
    _spool(path, [Logged(*decided[0], False, 1.0)])
    reports: list[dict[str, Any]] = []
    conversion = Conversion(_settings(tmp_path, me), reports.append)
    assert conversion.run_pass() == 0 and conversion.failed
    assert path.exists() and "error" in reports[0]
    (tmp_path / "logs").unlink()
    assert conversion.run_pass() == 1 and not conversion.failed
    assert not path.exists() and reports[-1]["items"] == 1


def test_the_join_converts_every_finalised_file_first(
    tmp_path: Path, decided: list[tuple[ScoreRequest, Decision]]
) -> None:
    """However far the converters lag, ``convert_pending`` (the join's first step) writes
    every finalised spool file, a live worker's too; an open one stays its writer's."""
    from engine.logs.converter import convert_pending

    spool = tmp_path / "logs" / "spool"
    spool.mkdir(parents=True)
    live = os.getppid()  # a live process that is not this one
    _spool(
        spool / f"decisions-20260101T000000.000000-{HOST}-{live}-1.spool",
        [Logged(*decided[0], False, 1.0)],
    )
    _spool(
        spool / f"decisions-20260101T000001.000000-{HOST}-{live}-2.spool.partial",
        [Logged(*decided[1], False, 1.0)],
    )
    assert convert_pending(str(tmp_path / "logs"), load_config()) == 1
    rows = pl.read_parquet(next((tmp_path / "logs").glob("decisions-*.parquet")))
    assert rows["request_id"].unique().to_list() == ["r0"]
    assert rows["worker"].unique().to_list() == [f"{HOST}:{live}"]
    assert [p.name.endswith(".partial") for p in spool.iterdir()] == [True]


def test_the_converter_waits_for_work_before_importing_anything_heavy(tmp_path: Path) -> None:
    """Its worker's open file is no work: importing polars and pyarrow then (1-2 s of CPU)
    would cost the workers as the load starts."""
    me, dead = os.getpid(), _dead_pid()
    (tmp_path / f"decisions-20260101T000000.000000-{HOST}-{me}-1.spool.partial").touch()
    script = (
        "import sys; from engine.logs.convert_main import _pending; "
        f"print(_pending({str(tmp_path)!r}, {me}), 'polars' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
    (tmp_path / f"decisions-20260101T000000.000000-{HOST}-{dead}-1.spool.partial").touch()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False"], out.stderr
