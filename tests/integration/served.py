"""``admatch serve`` as a real process for tests: started with a config of the test's own, its
output collected line by line (so its pipe never fills), ready once it says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc

ADMATCH = Path(sys.executable).parent / "admatch"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "engine" / "default_config.toml"


def config_file(tmp_path: Path, name: str = "config.toml", **replace: str) -> Path:
    """The shipped config with ``old=new`` text replacements (keys as written in the file,
    e.g. ``{'metrics_port = 9464': 'metrics_port = 0'}`` passed as ``replace``), written to
    ``tmp_path``. The metrics endpoint is off unless a replacement turns it on; the embedded
    store keeps its state under ``tmp_path`` unless a replacement says otherwise."""
    text = DEFAULT_CONFIG.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    text = text.replace("metrics_port = 9464", "metrics_port = 0")
    text = text.replace('state_dir = "data/state"', f'state_dir = "{tmp_path / "state"}"')
    path = tmp_path / name
    path.write_text(text)
    return path


def edits(**pairs: str) -> dict[str, str]:
    """``key=value`` lines of the config as replacements for :func:`config_file`: each
    ``key = <shipped value>`` line becomes ``key = value``."""
    text = DEFAULT_CONFIG.read_text()
    out = {}
    for key, value in pairs.items():
        line = next(
            ln for ln in text.splitlines() if ln.split("#")[0].strip().startswith(f"{key} =")
        )
        old = line.split("#")[0].rstrip()
        out[old] = f"{key} = {value}"
    return out


class Served:
    """A running ``admatch serve`` and what it has printed so far."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(ADMATCH), "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: a test can signal just it
        )
        self.lines: list[str] = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until ``condition()``; fail with the output when it does not come."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} did not happen in {timeout_s} s; output:\n{self.output()}")

    def ready(self, timeout_s: float = 120.0) -> Served:
        """Wait for "admatch serving on host:port" (every worker serves); note the port."""

        def said() -> bool:
            for line in self.lines:
                if "admatch serving on" in line:
                    self.port = int(
                        line.split("admatch serving on ", 1)[1].split()[0].rsplit(":")[1]
                    )
                    return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"admatch serve exited {self.proc.returncode}:\n{self.output()}"
                )
            return False

        self.wait_for(said, timeout_s, "admatch serving")
        self.wait_for(self._answers, timeout_s, "a health check answered")
        return self

    def _answers(self) -> bool:
        with grpc.insecure_channel(self.target()) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return True

    def target(self) -> str:
        """host:port to call."""
        return f"127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        """The pids of its worker processes (and its embedded Redis)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the parent alone."""
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill_all(self) -> None:
        """Kill the parent and everything of its process group (a test's clean-up)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def cmdline(pid: int) -> bytes:
    """A process's command line (empty once it has gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


Launch = Callable[..., "Served"]  # the ``launch`` fixture: ``serve``, killed after the test


def serve(
    model_dir: Path,
    config: Path,
    port: int = 0,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Served:
    """Start ``admatch serve`` (not waiting: call ``ready()``)."""
    args = ["--model", str(model_dir), "--config", str(config), "--port", str(port)]
    return Served([*args, "--workers", str(workers)], env)


def model_info(target: str, timeout_s: float = 10.0) -> pb.ModelInfo:
    """GetModelInfo over a fresh connection (the kernel picks a worker per connection)."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        info: pb.ModelInfo = pb_grpc.AdMatchingStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=timeout_s
        )
    return info


def every_worker(target: str, workers: int, timeout_s: float = 60.0) -> dict[str, pb.ModelInfo]:
    """GetModelInfo from each of the server's workers, by worker name (new connections until
    every worker has answered)."""
    seen: dict[str, pb.ModelInfo] = {}
    end = time.monotonic() + timeout_s
    while len(seen) < workers and time.monotonic() < end:
        info = model_info(target)
        seen[info.served_by] = info
    assert len(seen) == workers, f"{len(seen)} of {workers} workers answered"
    return seen
