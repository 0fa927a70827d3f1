"""Reading a stream's messages ahead, so that several of them share a scoring pass.

``read_ahead(messages, start, depth, idle)`` reads the messages in a thread of its own and
calls ``start`` on each (the servicer queues it for the next pass), up to ``depth`` messages
before the consumer has taken the first, and yields what ``start`` returned, in order. An error
while reading (a cancelled call) or starting ends the reading; it is raised in order, after the
messages before it. A consumer that has had everything answered and waits ``idle.seconds`` for
the next message gets ``idle.error()`` raised instead: an idle stream ends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_POLL_S = 0.1  # how often a blocked reader checks that the consumer is still there


@dataclass(frozen=True)
class Idle:
    """How long a stream may wait for its next message, and the error that ends it then."""

    seconds: float | None
    error: Callable[[], Exception]


NEVER_IDLE = Idle(None, lambda: RuntimeError("unreachable"))


def read_ahead(
    messages: Iterator[In], start: Callable[[In], Out], depth: int, idle: Idle = NEVER_IDLE
) -> Iterator[Out]:
    """``start(m)`` for each message, at most ``depth`` ahead of the consumer, in order.

    Raises:
        Whatever reading or starting a message raised, once the messages before it are out;
        ``idle.error()`` when no message came for ``idle.seconds`` after the last was taken.
    """
    started: queue.Queue[tuple[Out | None, Exception | None] | None] = queue.Queue(depth)
    gone = threading.Event()

    def put(item: tuple[Out | None, Exception | None] | None) -> bool:
        while not gone.is_set():
            try:
                started.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for message in messages:
                if not put((start(message), None)):
                    return
        except Exception as exc:  # handed over, raised in order by the consumer
            put((None, exc))
            return
        put(None)  # the end

    threading.Thread(target=read, name="admatch-stream-reader", daemon=True).start()
    try:
        while True:
            try:
                item = started.get(timeout=idle.seconds)
            except queue.Empty:
                raise idle.error() from None
            if item is None:
                break
            value, error = item
            if error is not None:
                raise error
            yield value  # type: ignore[misc]  # not None when error is None
    finally:
        gone.set()
