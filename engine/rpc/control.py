"""The pipe between ``admatch serve``'s parent and each worker: start-up, and reloads that
reach every worker, all or nothing.

Messages (tuples) on one duplex ``multiprocessing`` pipe per worker:

* worker -> parent: ``("ready", name)`` or ``("failed", message)`` once, at start;
  ``("reload", request, model_dir, config_path)`` when a ReloadModel call asks for one;
  ``("reply", op, ok, payload)`` to each command below.
* parent -> worker: ``("stage", op, model_dir, config_path)`` (load and check, do not serve
  yet), ``("commit", op, staged)`` (serve what ``staged`` loaded; the reply's payload is the
  worker's name), ``("abort", staged)`` (no reply); ``("reloaded", request, ok, payload)``
  answering a reload request with the names of the workers that switched, or the error that
  refused it.

An error travels as ``(status, message)`` and is raised again as a :class:`RemoteError` with
that status. Paths travel as strings (``None``: keep the current one).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.errors import AdmatchError

Message = tuple[Any, ...]
Failure = tuple[str, str]  # an error's status name and message


class RemoteError(AdmatchError):
    """An error raised in another process of the server, with the status it had there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def failure(exc: BaseException) -> Failure:
    """An error as it travels: its status (INTERNAL for a non-admatch error) and message."""
    if isinstance(exc, AdmatchError):
        return exc.status, str(exc)
    return "INTERNAL", f"{type(exc).__name__}: {exc}"


def path(text: str | None) -> Path | None:
    """A path as it arrives (``None``: keep the current one)."""
    return None if text is None else Path(text)


def text(value: Path | None) -> str | None:
    """A path as it travels."""
    return None if value is None else str(value)


class Link:
    """One end of a worker's pipe: sends from any thread; answers come back to
    :meth:`request`'s caller through :meth:`resolve`, called by whoever reads the pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._waiting: dict[str, Future[Any]] = {}
        self._ids = itertools.count()

    def send(self, *message: Any) -> None:
        """Send one message (thread-safe).

        Raises:
            OSError, EOFError: the other end is gone.
        """
        with self._send_lock:
            self.conn.send(message)

    def request(self, build: Callable[[str], Message]) -> tuple[str, Future[Any]]:
        """Send ``build(key)``; return the key and the future its answer resolves
        (:meth:`resolve`)."""
        key = f"{id(self)}-{next(self._ids)}"
        future: Future[Any] = Future()
        self._waiting[key] = future
        try:
            self.send(*build(key))
        except (OSError, EOFError) as exc:
            self._waiting.pop(key, None)
            future.set_exception(RemoteError("UNAVAILABLE", f"the other process is gone: {exc}"))
        return key, future

    def resolve(self, key: str, ok: bool, payload: Any) -> None:
        """Complete the request ``key``: its result, or a :class:`RemoteError`."""
        future = self._waiting.pop(key, None)
        if future is None:
            return  # its caller gave up waiting
        if ok:
            future.set_result(payload)
        else:
            future.set_exception(RemoteError(*payload))

    def fail_all(self, reason: str) -> None:
        """Fail every request still waiting (the other end is gone)."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(RemoteError("UNAVAILABLE", reason))
