"""The cap store's circuit breaker: a store that stopped answering is not waited for again and
again; it is probed until it answers; only state changes are logged (issue 16, items 8-9)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from engine.caps.breaker import Breaker, GuardedStore
from engine.caps.store import StoreUnavailable


class Flaky:
    """A store whose calls fail (``down``) or answer, counting the calls that reach it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.pings = 0

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("cap store: TimeoutError: Timeout reading from socket")

    def record(self, impressions: list[Any]) -> int:
        self._call()
        return len(impressions)

    def read_many(self, plans: Any, budget_s: float | None = None) -> list[Any]:
        self.calls += 1
        if self.down:
            return [StoreUnavailable("no answer")] * len(plans)
        return [None] * len(plans)

    def ping(self, budget_s: float | None = None) -> None:
        self.pings += 1
        if self.down:
            raise StoreUnavailable("no answer")

    def close(self) -> None:
        pass


def guarded(failures: int = 1, backoff_s: float = 0.01) -> tuple[GuardedStore, Flaky]:
    flaky = Flaky()
    breaker = Breaker(lambda: flaky.ping(), failures, backoff_s, max_backoff_s=0.05)
    return GuardedStore(flaky, breaker), flaky  # type: ignore[arg-type]


def wait_until(condition: Any, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_an_open_circuit_fails_at_once_without_calling_the_store() -> None:
    store, flaky = guarded(backoff_s=10.0)  # no probe during the test
    flaky.down = True
    with pytest.raises(StoreUnavailable):
        store.record([])  # nothing to record: no call, no failure
        store.record([object()])  # type: ignore[list-item]
    assert not store.breaker.up and flaky.calls == 1
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match="circuit open"):
            store.record([object()])  # type: ignore[list-item]
    answers = store.read_many([object(), object()])  # type: ignore[list-item]
    assert all(isinstance(a, StoreUnavailable) for a in answers)
    assert flaky.calls == 1 and store.breaker.failed_fast == 6
    store.close()


def test_the_circuit_opens_after_the_configured_failures_in_a_row() -> None:
    store, flaky = guarded(failures=3, backoff_s=10.0)
    flaky.down = True
    for expected_up in (True, True, False):
        with pytest.raises(StoreUnavailable):
            store.record([object()])  # type: ignore[list-item]
        assert store.breaker.up is expected_up
    store.close()


def test_a_success_resets_the_count_of_failures() -> None:
    store, flaky = guarded(failures=2, backoff_s=10.0)
    for down in (True, False, True, False, True):
        flaky.down = down
        try:
            store.record([object()])  # type: ignore[list-item]
        except StoreUnavailable:
            pass
    assert store.breaker.up  # never two failures in a row
    flaky.down = True
    with pytest.raises(StoreUnavailable):
        store.record([object()])  # type: ignore[list-item]
    assert not store.breaker.up
    store.close()


def test_a_probe_closes_the_circuit_when_the_store_answers_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The probe needs no traffic (a server reported NOT_SERVING gets none); each change of
    state is one log line, however many calls failed meanwhile."""
    store, flaky = guarded(backoff_s=0.01)
    changes: list[bool] = []
    store.breaker.listen(changes.append)
    flaky.down = True
    with caplog.at_level(logging.INFO, logger="engine.caps.breaker"):
        for _ in range(50):
            with pytest.raises(StoreUnavailable):
                store.record([object()])  # type: ignore[list-item]
        assert wait_until(lambda: flaky.pings >= 3)  # probing, backing off
        assert not store.breaker.up
        flaky.down = False
        assert wait_until(lambda: store.breaker.up)
    assert changes == [False, True]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("cap store unavailable, circuit open: ")
    assert lines[1].startswith("cap store answering again, circuit closed after ")
    assert "(49 calls failed fast)" in lines[1]
    assert store.record([]) == 0 and flaky.calls == 1  # the one call that found it down
    store.close()


def test_probes_back_off_while_the_store_stays_down() -> None:
    flaky = Flaky()
    flaky.down = True
    breaker = Breaker(lambda: flaky.ping(), 1, backoff_s=0.02, max_backoff_s=0.08)
    breaker.failed(StoreUnavailable("no answer"))
    time.sleep(0.6)
    # pauses 0.02, 0.04, 0.08, 0.08, ...: about 9 probes in 0.6 s, not 30
    assert 3 <= flaky.pings <= 12, flaky.pings
    breaker.stop()


def test_concurrent_callers_see_one_opening() -> None:
    store, flaky = guarded(backoff_s=10.0)
    flaky.down = True
    changes: list[bool] = []
    store.breaker.listen(changes.append)
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                store.record([object()])  # type: ignore[list-item]
            except StoreUnavailable:
                pass

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert changes == [False]
    store.close()
