"""The request deadline, on an injected clock."""

from __future__ import annotations

import pytest

from engine.deadline import NO_DEADLINE, Deadline
from engine.errors import DeadlineExceeded


def test_a_deadline_ends_after_its_budget() -> None:
    now = [100.0]
    deadline = Deadline(0.05, clock=lambda: now[0])
    deadline.check("caps")
    now[0] += 0.049
    assert deadline.remaining() == pytest.approx(0.001)
    deadline.check("scoring")
    now[0] += 0.001
    with pytest.raises(DeadlineExceeded, match="deadline of 50 ms exceeded before scoring"):
        deadline.check("scoring")
    assert DeadlineExceeded.status == "DEADLINE_EXCEEDED"


def test_no_deadline_never_ends() -> None:
    assert NO_DEADLINE.remaining() is None
    NO_DEADLINE.check("anything")
