"""Hot reload: a thread that watches the model directory (and config file) for a change.

A changed ``metadata.json`` (written last by training) or config file triggers ``reload()``:
in ``admatch serve`` the parent's all-or-nothing reload of every worker (``supervisor``), in a
lone server ``App.reload``. A broken model or config is refused with a logged warning and the
current one keeps serving. Requests in flight finish on the objects they started with (the swap
replaces references atomically), so a reload never fails a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from engine.errors import AdmatchError

log = logging.getLogger(__name__)

Watched = Callable[[], tuple[Path, Path | None]]  # the model directory and config file now


def _stamp(path: Path | None) -> int:
    try:
        return path.stat().st_mtime_ns if path is not None else 0
    except OSError:
        return -1


class ReloadWatcher:
    """Polls ``watched()`` every ``interval_s`` seconds and calls ``reload()`` when the model's
    ``metadata.json`` or the config file changed (a refused reload is logged, not retried
    until the files change again)."""

    def __init__(self, watched: Watched, reload: Callable[[], object], interval_s: float) -> None:
        self.watched = watched
        self.reload = reload
        self.interval_s = interval_s
        self._seen = self._stamps()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admatch-reload", daemon=True)

    def _stamps(self) -> tuple[int, int]:
        model_dir, config = self.watched()
        return _stamp(model_dir / "metadata.json"), _stamp(config)

    def start(self) -> ReloadWatcher:
        """Start watching."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = self._stamps()
            if now == self._seen:
                continue
            self._seen = now
            try:
                self.reload()
            except AdmatchError as exc:
                log.warning("reload refused, still serving the current model: %s", exc)
            except Exception:  # the watcher must outlive any surprise; the service keeps going
                log.exception("reload failed, still serving the current model")

    def stop(self) -> None:
        """Stop watching (waits for the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
