"""``admatch replay`` over gRPC against a real server: the same decisions as in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from benchmarks.cluster import free_port
from engine.app import App, build_app
from engine.config import load_config
from engine.replay.run import ReplayOptions, replay
from engine.rpc.metrics import Metrics
from engine.rpc.server import build_server


@pytest.fixture
def server(model_dir: Path, memory_config: Path) -> Iterator[tuple[str, str]]:
    """A server on free ports (gRPC and /metrics) over an in-memory cap store."""
    config = load_config(memory_config)
    app: App = build_app(config, model_dir)
    metrics = Metrics()
    metrics_port = free_port()
    metrics.serve_http("127.0.0.1", metrics_port)
    limits = config.server.model_copy(update={"port": 0})
    serving = build_server(app, limits, metrics=metrics)
    port = serving.port
    yield f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    serving.stop(1)
    app.close()


def test_grpc_and_in_process_decide_alike(
    server: tuple[str, str], model_log: Path, model_dir: Path, memory_config: Path, tmp_path: Path
) -> None:
    target, metrics_url = server
    common = dict(
        log=model_log,
        model_dir=model_dir,
        config_path=memory_config,
        max_requests=400,
        save_decisions=True,
        plots=False,
    )
    remote = replay(
        ReplayOptions(
            report_dir=tmp_path / "grpc",
            target=target,
            fresh_state=True,
            metrics_url=metrics_url,
            **common,  # type: ignore[arg-type]
        )
    )
    local = replay(ReplayOptions(report_dir=tmp_path / "local", batch=1, **common))  # type: ignore[arg-type]
    a = pl.read_parquet(tmp_path / "grpc" / "decisions.parquet")
    b = pl.read_parquet(tmp_path / "local" / "decisions.parquet")
    assert len(a) == len(b) == remote["candidates"] == local["candidates"]
    assert remote["decisions"]["fill_rate"] == local["decisions"]["fill_rate"]
    assert a.select("request_id", "ad_id", "rank", "reason").equals(
        b.select("request_id", "ad_id", "rank", "reason")
    )
    assert (a["utility"] - b["utility"]).abs().max() < 1e-9
    assert remote["errors"]["total"] == 0 and remote["decisions"]["cap_violations"] == 0
    assert remote["engine"]["mode"] == "grpc" and remote["engine"]["config_matches_server"]
    assert remote["throughput"]["basis"] == "wall clock"
    assert remote["stages_source"] == "server histogram"
    assert {"decode", "caps", "features", "model", "rank", "encode"} <= set(remote["stages_ms"])
    assert remote["floor"]["ratio"] is not None


def test_concurrent_streams_with_reservation(
    server: tuple[str, str], model_log: Path, memory_config: Path, tmp_path: Path
) -> None:
    target, _ = server
    doc = replay(
        ReplayOptions(
            log=model_log,
            report_dir=tmp_path,
            config_path=memory_config,
            target=target,
            concurrency=4,
            stream=True,
            reserve=True,
            fresh_state=True,
            max_requests=600,
            plots=False,
        )
    )
    assert doc["requests"] == 600 and doc["errors"]["total"] == 0
    assert doc["decisions"]["cap_violations"] == 0
    assert doc["floor"]["ratio"] is None  # no model here: no floor, said so
    assert "--model" in doc["floor"]["note"]


def test_open_loop_rate(
    server: tuple[str, str], model_log: Path, memory_config: Path, tmp_path: Path
) -> None:
    target, _ = server
    doc = replay(
        ReplayOptions(
            log=model_log,
            report_dir=tmp_path,
            config_path=memory_config,
            target=target,
            concurrency=4,
            rate=100.0,
            fresh_state=True,
            max_requests=150,
            plots=False,
        )
    )
    # 150 requests due over 1.5 s: the replay cannot finish much sooner
    assert doc["wall_seconds"] >= 1.4 and doc["errors"]["total"] == 0


def test_no_server_is_a_clear_error(model_log: Path, tmp_path: Path) -> None:
    from engine.errors import InvalidArgument

    target = f"127.0.0.1:{free_port()}"
    options = ReplayOptions(
        log=model_log, report_dir=tmp_path, target=target, connect_timeout_s=0.5
    )
    with pytest.raises(InvalidArgument) as err:
        replay(options)
    assert err.value.field == "--target" and "no admatch server" in err.value.problem
