"""The converter process's entry (``python -m engine.logs.convert_main``): the standard library
only until there is work and idle CPU, so that starting it costs the workers nothing (importing
the converter, polars and pyarrow takes ~1-2 s of CPU: it happens in idle time).
See engine/logs/converter.py.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

from engine.logs.names import takes

MAX_BACKOFF_S = 10.0  # a failing conversion is tried again at most this far apart


class IdleGate:
    """Holds the converter back while the machine is busy: ``__call__`` returns once, over the
    last ``interval_s``, at least ``min_idle`` of the CPU was idle or the converter's own (so
    that it converts in the service's idle time, not only at a lower priority: on shared or
    hyper-threaded cores even an idle-priority process slows the workers). ``open()``: stop
    holding back (the worker has stopped: finish the spool at once)."""

    def __init__(self, min_idle: float = 0.3, interval_s: float = 0.25) -> None:
        self.min_idle, self.interval_s = min_idle, interval_s
        self.opened = threading.Event()
        self._hz = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ticks() -> tuple[int, int]:
        """(idle, total) CPU ticks of the machine so far."""
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])

    def open(self) -> None:
        self.opened.set()

    def __call__(self) -> None:
        if not os.path.exists("/proc/stat"):
            return
        while not self.opened.is_set():
            idle0, total0 = self._ticks()
            own0 = time.process_time()
            if self.opened.wait(self.interval_s):
                return
            idle1, total1 = self._ticks()
            capacity = (total1 - total0) / self._hz
            free = (idle1 - idle0) / self._hz + time.process_time() - own0
            if capacity <= 0 or free / capacity >= self.min_idle:
                return


def _lowest_priority() -> None:
    """Run only when no one else wants the CPU (Linux SCHED_IDLE: a worker that wakes takes
    the CPU at once), else at nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def main() -> None:
    """Settings from stdin's first line, then passes until stdin closes (and a last one)."""
    _lowest_priority()
    raw = json.loads(sys.stdin.readline())
    closed = threading.Event()
    gate = IdleGate()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the worker closed it, or died
        closed.set()
        gate.open()

    threading.Thread(target=watch_stdin, daemon=True).start()
    lock = threading.Lock()

    def report(line: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    while not closed.wait(raw.get("poll_s", 0.2)) and not _pending(raw["spool"], raw["worker"]):
        pass
    gate()  # the imports below cost ~1-2 s of CPU: in idle time
    from engine.logs.converter import Conversion, ConverterSettings

    conversion = Conversion(ConverterSettings(**raw), report, gate)
    wait_s = conversion.settings.poll_s
    while not closed.wait(wait_s):
        conversion.run_pass()
        wait_s = min(wait_s * 2, MAX_BACKOFF_S) if conversion.failed else conversion.settings.poll_s
    conversion.run_pass()  # what the worker finalised as it stopped


def _pending(spool: str, worker: int) -> bool:
    """Whether the spool holds a file for this converter to convert now (its worker's open
    file is not: importing the converter while the load starts would cost the workers)."""
    host = socket.gethostname()
    try:
        return any(takes(name, host, worker) for name in os.listdir(spool))
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    main()
