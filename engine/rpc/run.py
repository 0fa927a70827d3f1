"""``admatch serve``: a parent process that owns the port and the embedded store, and ``workers``
processes that serve (docs/operations.md has the whole process model). The parent claims the
port (``port.claim_port``: no other server may share it), starts the embedded Redis when no
store URL is configured, starts the workers and waits until each serves (one that cannot start,
e.g. cannot bind, stops the others and the server exits 1 with its message). It then watches
them: a worker that dies is started again (more than ``MAX_RESTARTS`` in ``RESTART_WINDOW_S``
and the server gives up, exit 1), an embedded Redis that dies is started again (from its state
directory, if it has one), the model and config files are watched for reloads, and ReloadModel
calls are carried out in every worker, all or nothing. SIGTERM or SIGINT stops it: every worker
drains (health NOT_SERVING, ``drain_s``), lets calls in flight finish (``shutdown_grace_s``) and
stops; then the store. When the parent itself dies, however, the workers stop too
(``worker.die_with_parent``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from engine.caps.embedded import EmbeddedRedis
from engine.config import AdmatchConfig
from engine.errors import AdmatchError
from engine.rpc.control import Link, RemoteError, failure, path, text
from engine.rpc.port import claim_port
from engine.rpc.reload import ReloadWatcher
from engine.rpc.worker import RELOAD_TIMEOUT_S, run_worker

log = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0  # a worker has this long to load its model and listen
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
_POLL_S = 0.25


class ServeError(AdmatchError):
    """The server could not start, or its workers kept failing."""

    status = "UNAVAILABLE"


@dataclass
class _Worker:
    """The parent's handle on one worker process."""

    index: int
    process: BaseProcess
    link: Link
    started: Future[str] = field(default_factory=Future)
    stopping: bool = False


class Server:
    """The parent of one ``admatch serve``."""

    def __init__(
        self,
        config: AdmatchConfig,
        model_dir: Path,
        workers: int,
        logging_setup: tuple[str, str],
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.model_dir, self.config_path = model_dir, config_path  # what serves now
        self.config_changed = False  # a reload read a config file since the start
        self.count = workers
        self.logging_setup = logging_setup
        self.port = config.server.port
        self.workers: list[_Worker] = []
        self.embedded: EmbeddedRedis | None = None
        self.stop = threading.Event()
        self._restarts: deque[float] = deque()
        self._reload_lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")

    def serve(self, on_ready: Callable[[int, list[str]], None]) -> None:
        """Claim the port, start the store and the workers, call ``on_ready(port, workers)``,
        and supervise until SIGTERM/SIGINT.

        Raises:
            PortInUse: another process listens on the port.
            ServeError: a worker could not start, or workers kept dying; an in-memory store
                (``memory://``) with more than one worker (each would count apart).
        """
        if self.config.store.url.startswith("memory://") and self.count > 1:
            raise ServeError(
                "store.url memory:// is one process's store: with --workers "
                f"{self.count} each worker would count caps apart; use one worker or Redis"
            )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        claim = claim_port(self.config.server.host, self.port)
        self.port = claim.port
        watcher = None
        try:
            self._start_store()
            self.workers = [self._spawn(i) for i in range(self.count)]
            names = [self._started(w) for w in self.workers]
            on_ready(self.port, names)
            interval = self.config.server.reload_interval_s
            if interval:
                watcher = ReloadWatcher(
                    lambda: (self.model_dir, self.config_path),
                    lambda: self.reload(None, self.config_path),
                    interval,
                ).start()
            self._supervise()
        finally:
            if watcher is not None:
                watcher.stop()
            self._stop_workers()
            if self.embedded is not None:
                self.embedded.stop()
            claim.release()

    def _start_store(self) -> None:
        if self.config.store.url:
            return
        state = self.config.store.state_dir
        self.embedded = EmbeddedRedis(state_dir=Path(state) if state else None).start()
        store = self.config.store.model_copy(update={"url": f"unix://{self.embedded.socket}"})
        self.config = self.config.model_copy(update={"store": store})

    def _spawn(self, index: int) -> _Worker:
        """Start worker ``index`` on the model that serves now (from the main thread: the
        parent-death signal is sent when the thread that started a process ends)."""
        mine, theirs = self._context.Pipe(duplex=True)
        reloaded_config = text(self.config_path) if self.config_changed else None
        # read by polars when the worker imports it (a spawned process takes this environment)
        os.environ["POLARS_MAX_THREADS"] = str(self.config.server.compute_threads)
        process = self._context.Process(
            target=run_worker,
            args=(
                self.config.model_dump(),
                str(self.model_dir),
                self.port,
                index,
                self.logging_setup,
                theirs,
                os.getpid(),
                reloaded_config,
            ),
            name=f"admatch-worker-{index}",
        )
        process.start()
        theirs.close()
        worker = _Worker(index, process, Link(mine))
        threading.Thread(
            target=self._listen, args=(worker,), name=f"admatch-link-{index}", daemon=True
        ).start()
        return worker

    def _started(self, worker: _Worker) -> str:
        """Wait until ``worker`` serves; its name.

        Raises:
            ServeError: it could not start (its own message), or died, or took too long, or
                the server was told to stop meanwhile.
        """
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.stop.is_set():
                raise ServeError("stopped while the workers were starting")
            try:
                return worker.started.result(timeout=_POLL_S)
            except TimeoutError:
                continue
            except RemoteError as exc:
                raise ServeError(f"worker {worker.index} could not start: {exc}") from None
        raise ServeError(f"worker {worker.index} did not start in {START_TIMEOUT_S:g} s")

    def _listen(self, worker: _Worker) -> None:
        """Read one worker's messages until its pipe closes (it ended)."""
        conn: Connection = worker.link.conn
        while True:
            try:
                message: tuple[Any, ...] = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "ready":
                worker.started.set_result(message[1])
            elif kind == "failed":
                worker.started.set_exception(RemoteError("UNAVAILABLE", message[1]))
            elif kind == "reply":
                worker.link.resolve(message[1], message[2], message[3])
            elif kind == "reload":
                threading.Thread(
                    target=self._answer_reload, args=(worker, *message[1:]), daemon=True
                ).start()
        worker.link.fail_all(f"worker {worker.index} ended")
        if not worker.started.done():
            code = worker.process.exitcode
            worker.started.set_exception(RemoteError("UNAVAILABLE", f"it exited ({code})"))

    def _supervise(self) -> None:
        """Until told to stop: start again a worker that died, and a store that died."""
        while not self.stop.is_set():
            wait([w.process.sentinel for w in self.workers], timeout=_POLL_S)
            if self.stop.is_set():
                return
            for i, worker in enumerate(self.workers):
                if worker.process.exitcode is not None and not worker.stopping:
                    self.workers[i] = self._replace(worker)
            if self.embedded is not None and not self.embedded.running():
                lost = "from its state_dir" if self.embedded.state_dir else "its counts are lost"
                log.error("embedded Redis died: starting it again (%s)", lost)
                self.embedded.start()

    def _replace(self, dead: _Worker) -> _Worker:
        """A new worker in place of one that died.

        Raises:
            ServeError: too many workers died lately (the server gives up).
        """
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW_S:
            self._restarts.popleft()
        code = dead.process.exitcode
        if len(self._restarts) > MAX_RESTARTS:
            raise ServeError(
                f"worker {dead.index} died ({code}); {len(self._restarts)} workers died in "
                f"{RESTART_WINDOW_S:g} s: giving up"
            )
        log.error("worker %d died (exit code %s): starting it again", dead.index, code)
        worker = self._spawn(dead.index)
        self._started(worker)
        return worker

    def reload(self, model_dir: Path | None, config_path: Path | None) -> list[str]:
        """Load a model (``None``: the current directory) and config file (``None``: the
        current config) into every worker, all or nothing: each stages it, and only when all
        could do they all commit; else all abort. One reload at a time.

        Returns:
            The names (host:pid) of the workers that switched: all of them.

        Raises:
            RemoteError: a worker refused it (its error: a broken model or config) or failed;
                nothing changed anywhere.
        """
        with self._reload_lock:
            workers = [w for w in self.workers if w.process.exitcode is None]
            staged = [
                w.link.request(lambda k: ("stage", k, text(model_dir), text(config_path)))
                for w in workers
            ]
            try:
                for _, future in staged:
                    future.result(timeout=RELOAD_TIMEOUT_S)
            except Exception as exc:
                for w, (key, _) in zip(workers, staged, strict=True):
                    _try(w.link.send, "abort", key)
                if isinstance(exc, AdmatchError):
                    raise
                raise RemoteError(*failure(exc)) from exc
            self.model_dir = model_dir or self.model_dir
            if config_path is not None:
                self.config_path, self.config_changed = config_path, True
            commits = [
                w.link.request(partial(_commit, staged=key))[1]
                for w, (key, _) in zip(workers, staged, strict=True)
            ]
            names = [f.result(timeout=RELOAD_TIMEOUT_S) for f in commits]
        log.info("reloaded %s (config %s) in %d workers", self.model_dir, config_path, len(names))
        return names

    def _answer_reload(
        self, worker: _Worker, key: str, model_dir: str | None, config_path: str | None
    ) -> None:
        """Carry out a worker's ReloadModel and answer it."""
        try:
            names = self.reload(path(model_dir), path(config_path))
        except Exception as exc:
            log.warning("reload refused, still serving the current model: %s", exc)
            _try(worker.link.send, "reloaded", key, False, failure(exc))
            return
        _try(worker.link.send, "reloaded", key, True, names)

    def _stop_workers(self) -> None:
        """SIGTERM every worker (each drains, then stops), then wait; kill what is left."""
        server = self.config.server
        for w in self.workers:
            w.stopping = True
            if w.process.exitcode is None and w.process.pid is not None:
                _try(os.kill, w.process.pid, signal.SIGTERM)
        end = time.monotonic() + server.drain_s + server.shutdown_grace_s + 10
        for w in self.workers:
            w.process.join(max(end - time.monotonic(), 0.1))
            if w.process.exitcode is None:
                log.error("worker %d did not stop: killing it", w.index)
                w.process.kill()
                w.process.join(5)


def _try(action: Callable[..., object], *args: Any) -> None:
    """``action(*args)``; a process already gone is no error here."""
    try:
        action(*args)
    except (OSError, EOFError):
        pass


def _commit(key: str, staged: str) -> tuple[str, str, str]:
    return ("commit", key, staged)
