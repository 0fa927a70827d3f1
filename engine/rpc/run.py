"""Running the service: one process, or ``workers`` processes sharing a port (SO_REUSEPORT).

Every worker loads the model once and serves on the same port; the kernel spreads connections
over them. They share one cap store: with no Redis URL configured, the parent starts the
embedded Redis and hands its unix socket to the workers. SIGTERM or SIGINT stops accepting,
lets in-flight calls finish (5 s grace), then closes the store.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from engine.caps.embedded import EmbeddedRedis
from engine.config import AdmatchConfig
from engine.logs.jsonlog import configure

GRACE_S = 5.0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def serve_one(
    config: AdmatchConfig,
    model_dir: Path,
    port: int,
    index: int = 0,
    config_path: Path | None = None,
) -> None:
    """Serve in this process until SIGTERM/SIGINT (``index``: metrics port offset), reloading
    a changed model directory or config file."""
    from engine.app import build_app
    from engine.rpc.metrics import Metrics
    from engine.rpc.reload import ReloadWatcher
    from engine.rpc.server import build_server
    from engine.rpc.service import publish_serving

    app = build_app(config, model_dir)
    limits = config.server
    metrics = Metrics()
    if limits.metrics_port:
        metrics.serve_http(limits.metrics_host, limits.metrics_port + index)
    server, _ = build_server(app, limits, f"{limits.host}:{port}", metrics)

    watcher = None
    if limits.reload_interval_s:
        watcher = ReloadWatcher(
            app, config_path, limits.reload_interval_s, lambda: publish_serving(app, metrics)
        ).start()
    _wait_for_signal()
    if watcher is not None:
        watcher.stop()
    server.stop(grace=GRACE_S).wait()
    app.close()


def _worker(
    config: dict[str, Any],
    model_dir: str,
    port: int,
    index: int,
    log: tuple[str, str],
    config_path: str | None,
) -> None:
    configure(*log)
    path = Path(config_path) if config_path else None
    serve_one(AdmatchConfig.model_validate(config), Path(model_dir), port, index, path)


def free_port(host: str) -> int:
    """A port that is free now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_workers(
    config: AdmatchConfig,
    model_dir: Path,
    port: int,
    workers: int,
    log: tuple[str, str],
    config_path: Path | None = None,
) -> None:
    """Run ``workers`` server processes on one port until SIGTERM/SIGINT."""
    embedded = None
    if not config.store.url:
        embedded = EmbeddedRedis().start()
        store = config.store.model_copy(update={"url": f"unix://{embedded.socket}"})
        config = config.model_copy(update={"store": store})
    ctx = multiprocessing.get_context("spawn")
    path = str(config_path) if config_path else None
    procs = [
        ctx.Process(
            target=_worker,
            args=(config.model_dump(), str(model_dir), port, i, log, path),
            name=f"admatch-worker-{i}",
        )
        for i in range(workers)
    ]
    try:
        for p in procs:
            p.start()
        _wait_for_signal()
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()  # SIGTERM: each worker stops gracefully
        for p in procs:
            p.join(GRACE_S + 10)
        if embedded is not None:
            embedded.stop()
