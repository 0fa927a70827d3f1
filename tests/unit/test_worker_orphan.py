"""An orphaned worker ends in bounded time, whatever its clean-up does (engine/rpc/worker.py).

CI once saw a worker outlive its killed parent by more than 5 s: the orphan's clean-up (closing
a store whose embedded Redis died with the parent, joining threads at exit) had no deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from engine.rpc.worker import ORPHAN_DEADLINE_S

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from multiprocessing import Pipe
    from engine.config import ServerConfig
    from engine.rpc import worker as w

    class Hanging:  # an app or a server whose clean-up takes argv[1] seconds
        def close(self):
            time.sleep(float(sys.argv[1]))
        def stop(self, grace):
            return self
        def wait(self):
            return None

    parent, child = Pipe()
    worker = w.Worker(child)
    w.install_signals(worker)
    threading.Thread(target=time.sleep, args=(600,)).start()  # a thread that never ends
    print("ready", flush=True)
    worker.stop.wait()
    serving = type("S", (), {"server": Hanging(), "health": None})()
    w._stop(worker, Hanging(), serving, ServerConfig())
    print("stopped", flush=True)
    """
)


def _orphan(clean_up_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(clean_up_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_orphan_whose_clean_up_hangs_still_ends() -> None:
    proc = _orphan(600)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGHUP)  # what the kernel sends when the parent dies
        start = time.monotonic()
        proc.wait(ORPHAN_DEADLINE_S + 10)
        assert time.monotonic() - start < ORPHAN_DEADLINE_S + 5
        assert proc.returncode != 0  # it did not finish its clean-up: not a clean exit
    finally:
        proc.kill()
        proc.wait()


def test_an_orphan_that_cleans_up_in_time_exits_0_without_waiting_for_threads() -> None:
    proc = _orphan(0.1)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGHUP)
        proc.wait(ORPHAN_DEADLINE_S + 10)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
