"""What a server takes on at once: requests in flight and open streams, counted apart.

A request in flight is a Score call, one ScoreStream message being decided, or a RecordEvents
call; beyond ``max_in_flight`` they are refused at once with RESOURCE_EXHAUSTED, so that the
ones admitted keep their latency. Open ScoreStreams count separately (``max_streams``): an idle
stream holds a thread but no request, so it must neither count as load nor starve other calls
of threads (``ServerConfig.threads`` leaves room for both, and for health, which is never
counted). Thread-safe; the counts are cheap (one lock, no allocation).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import Overloaded


class Admission:
    """Counts requests in flight and open streams against their bounds."""

    def __init__(self, max_in_flight: int, max_streams: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_streams = max_streams
        self.in_flight = 0
        self.streams = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        """Admit one request; pair with :meth:`leave`.

        Raises:
            Overloaded: ``max_in_flight`` requests are in flight already.
        """
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                raise Overloaded(
                    f"{self.in_flight} requests in flight, at most {self.max_in_flight} "
                    "(server.max_concurrent): back off and retry"
                )
            self.in_flight += 1

    def leave(self) -> None:
        """One admitted request is done."""
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request in flight for the block (:meth:`enter`, :meth:`leave`)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def stream(self) -> Iterator[None]:
        """One open stream for the block.

        Raises:
            Overloaded: ``max_streams`` streams are open already.
        """
        with self._lock:
            if self.streams >= self.max_streams:
                raise Overloaded(
                    f"{self.streams} ScoreStreams open, at most {self.max_streams} "
                    "(server.max_streams): use unary Score, or retry later"
                )
            self.streams += 1
        try:
            yield
        finally:
            with self._lock:
                self.streams -= 1
