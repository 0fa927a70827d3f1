"""A request's time budget, checked between stages of the core (the clock is injectable)."""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.errors import DeadlineExceeded


class Deadline:
    """Ends ``budget_s`` seconds after creation; ``None`` never ends."""

    def __init__(self, budget_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.budget_s = budget_s
        self.end = None if budget_s is None else clock() + budget_s

    def remaining(self) -> float | None:
        """Seconds left (negative once over); ``None`` without a deadline."""
        return None if self.end is None else self.end - self.clock()

    def exceeded(self, before: str) -> DeadlineExceeded:
        """The error for a budget spent before stage ``before``."""
        budget_ms = (self.budget_s or 0.0) * 1000
        return DeadlineExceeded(f"deadline of {budget_ms:.0f} ms exceeded before {before}")

    def check(self, before: str) -> None:
        """Raise :meth:`exceeded` if the budget is spent before stage ``before``."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise self.exceeded(before)


NO_DEADLINE = Deadline(None)
