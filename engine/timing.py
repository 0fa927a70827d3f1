"""Stage timers injected into the core: it times its stages without knowing who listens."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class StageTimer(Protocol):
    """Times named stages (decode, caps, features, model, rank, encode)."""

    def stage(self, name: str) -> AbstractContextManager[None]:
        """A context manager timing one stage."""
        ...


class NullTimer:
    """Times nothing (the default)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """See :class:`StageTimer`."""
        yield


class CallbackTimer:
    """Reports each stage's seconds to ``observe(stage, seconds)``; the clock is injectable."""

    def __init__(
        self,
        observe: Callable[[str, float], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.observe = observe
        self.clock = clock

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """See :class:`StageTimer`."""
        start = self.clock()
        try:
            yield
        finally:
            self.observe(name, self.clock() - start)


NULL_TIMER = NullTimer()
