"""One worker process of ``admatch serve``: loads the model, serves the port, obeys its parent.

A worker ends when its parent ends, however the parent ends: the kernel sends it SIGHUP when
the parent dies (Linux's parent-death signal, set first thing), and a closed pipe says the same
elsewhere. An orphaned worker stops at once (its cap store, when embedded, died with the
parent); a worker told to stop (SIGTERM, SIGINT) drains first: health says NOT_SERVING, calls
are still answered for ``server.drain_s``, then calls in flight get
``server.shutdown_grace_s``.

Reloads: a ReloadModel call asks the parent (``control``), which stages the new model in every
worker, commits it in all when all could load it, else aborts it in all; the call answers with
the workers that switched.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.app import App, Staged, build_app
from engine.config import AdmatchConfig, ServerConfig
from engine.logs.jsonlog import configure
from engine.rpc.control import Link, RemoteError, failure, path, text
from engine.rpc.metrics import Metrics
from engine.rpc.server import Serving, build_server
from engine.rpc.service import Reloader, worker_name

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
RELOAD_TIMEOUT_S = 600.0  # a reload waits this long for every worker to load a model


PARENT_DIED = signal.SIGHUP  # not SIGTERM: an orphan stops at once, without draining
# An orphan's clean-up (closing a store whose embedded Redis died with the parent, finishing the
# logs) gets this long; then the kernel ends the process (SIGALRM), whatever blocks it.
ORPHAN_DEADLINE_S = 3


def die_with_parent(parent: int) -> None:
    """Have the kernel send ``PARENT_DIED`` when the parent process ends (Linux), and send it
    now if the parent has ended already (before this call could take effect)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), PARENT_DIED)


class Worker:
    """The worker's side of the pipe, its app and its stop signal."""

    def __init__(self, conn: Connection) -> None:
        self.link = Link(conn)
        self.orphaned = False  # the parent died: stop at once
        self.stop = threading.Event()
        self.app: App | None = None
        self._staged: dict[str, Staged] = {}

    def parent_died(self, *_: object) -> None:
        """Stop at once: the parent (and an embedded store) is gone. The process ends within
        ``ORPHAN_DEADLINE_S`` seconds whatever its clean-up does (a kernel alarm)."""
        if not self.orphaned:
            self.orphaned = True
            signal.alarm(ORPHAN_DEADLINE_S)
        self.stop.set()

    def listen(self) -> None:
        """Read the parent's commands until the pipe closes (then stop: the parent is gone)."""
        while True:
            try:
                message = self.link.conn.recv()
            except (EOFError, OSError):
                self.link.fail_all("the server's parent process is gone")
                self.parent_died()
                return
            try:
                self._obey(message)
            except (EOFError, OSError):
                self.parent_died()
                return

    def _obey(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        if kind == "reloaded":
            self.link.resolve(key, message[2], message[3])
            return
        if kind == "abort":
            self._staged.pop(key, None)
            return
        assert self.app is not None
        try:
            if kind == "stage":
                self._staged[key] = self.app.stage(path(message[2]), path(message[3]))
                payload: Any = None
            else:  # commit
                self.app.commit(self._staged.pop(message[2]))
                log.info("serving model %s", self.app.scorer.model.version)
                payload = worker_name()
        except Exception as exc:  # refused here: the parent aborts the reload everywhere
            self.link.send("reply", key, False, failure(exc))
            return
        self.link.send("reply", key, True, payload)

    def reloader(self) -> Reloader:
        """ReloadModel's reload: through the parent, into every worker."""

        def reload(model_dir: Path | None, config_path: Path | None) -> list[str]:
            _, future = self.link.request(
                lambda key: ("reload", key, text(model_dir), text(config_path))
            )
            try:
                names: list[str] = future.result(timeout=RELOAD_TIMEOUT_S)
            except FutureTimeout:
                raise RemoteError(
                    "DEADLINE_EXCEEDED", f"the reload took over {RELOAD_TIMEOUT_S:g} s"
                ) from None
            return names

        return reload


def install_signals(worker: Worker) -> None:
    """The worker's signals (main thread): the parent's death stops it at once, SIGTERM and
    SIGINT stop it with a drain, SIGALRM (the orphan's deadline) ends the process."""
    signal.signal(PARENT_DIED, worker.parent_died)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def run_worker(
    config: dict[str, Any],
    model_dir: str,
    port: int,
    index: int,
    logging_setup: tuple[str, str],
    conn: Connection,
    parent: int,
    reloaded_config: str | None,
) -> None:
    """A worker's main (a ``multiprocessing`` spawn target): serve until told to stop.

    ``reloaded_config``: the config file a reload has read since the server started (a worker
    started again reads it too before serving; ``config`` is the one the server started with).
    """
    worker = Worker(conn)
    install_signals(worker)
    die_with_parent(parent)
    configure(*logging_setup)
    threading.Thread(target=worker.listen, name="admatch-control", daemon=True).start()
    settings = AdmatchConfig.model_validate(config)
    try:
        app, serving = _start(worker, settings, Path(model_dir), port, index, reloaded_config)
    except Exception as exc:
        log.error("worker %d could not start: %s", index, exc)
        worker.link.send("failed", str(exc))
        sys.exit(1)
    worker.link.send("ready", worker_name())
    worker.stop.wait()
    _stop(worker, app, serving, settings.server)


def _start(
    worker: Worker,
    config: AdmatchConfig,
    model_dir: Path,
    port: int,
    index: int,
    reloaded_config: str | None,
) -> tuple[App, Serving]:
    limits = config.server
    app = worker.app = build_app(config, model_dir)
    try:
        if reloaded_config is not None:
            app.reload(None, path(reloaded_config))
        metrics = Metrics()
        if limits.metrics_port:
            metrics.serve_http(limits.metrics_host, limits.metrics_port + index)
        address = f"{limits.host}:{port}"
        return app, build_server(app, limits, address, metrics, worker.reloader())
    except Exception:
        app.close()
        raise


def _stop(worker: Worker, app: App, serving: Serving, server: ServerConfig) -> None:
    grace = server.shutdown_grace_s
    if worker.orphaned:  # the parent (and an embedded store) is gone: stop now
        grace = min(grace, 1.0)
        log.warning("the server's parent process is gone: worker stopping")
    else:
        serving.health.drain()
        time.sleep(server.drain_s)
    serving.server.stop(grace=grace).wait()
    app.close()
    if worker.orphaned:  # no one waits for it: end now, without joining leftover threads
        logging.shutdown()
        os._exit(0)
