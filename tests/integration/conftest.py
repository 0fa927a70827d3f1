"""Real Redis servers for the cap store contract: embedded, local, and a three-node cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.cluster import local_cluster
from engine.app import App, build_app
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
    with local_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url
