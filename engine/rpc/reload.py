"""Hot reload: a thread that watches the model directory (and config file) and swaps them in.

A changed ``metadata.json`` (written last by training) or config file triggers
``App.reload``; a broken model or config is refused with a logged warning and the current one
keeps serving. Requests in flight finish on the objects they started with (the swap replaces
references atomically), so a reload never fails a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from engine.app import App
from engine.errors import AdmatchError

log = logging.getLogger(__name__)


def _stamp(path: Path | None) -> int:
    try:
        return path.stat().st_mtime_ns if path is not None else 0
    except OSError:
        return -1


class ReloadWatcher:
    """Polls every ``interval_s`` seconds; ``on_reload()`` runs after each successful swap."""

    def __init__(
        self,
        app: App,
        config_path: Path | None,
        interval_s: float,
        on_reload: Callable[[], object] = lambda: None,
    ) -> None:
        self.app = app
        self.config_path = config_path
        self.interval_s = interval_s
        self.on_reload = on_reload
        self._seen = self._stamps()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admatch-reload", daemon=True)

    def _stamps(self) -> tuple[int, int]:
        return _stamp(self.app.model_dir / "metadata.json"), _stamp(self.config_path)

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
                self.app.reload(config_path=self.config_path)
            except AdmatchError as exc:
                log.warning("reload refused, still serving the current model: %s", exc)
                continue
            except Exception:  # the watcher must outlive any surprise; the service keeps going
                log.exception("reload failed, still serving the current model")
                continue
            log.info("reloaded model %s", self.app.scorer.model.version)
            self.on_reload()

    def stop(self) -> None:
        """Stop watching (waits for the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
