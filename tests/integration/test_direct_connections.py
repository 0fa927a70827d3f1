"""The cap store's own connections to a standalone Redis (``engine/caps/direct.py``)."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from benchmarks.cluster import free_port
from engine.caps.connect import client_options, open_store
from engine.caps.direct import DirectConnections
from engine.caps.embedded import EmbeddedRedis, redis_binary
from engine.caps.redis_store import RedisCapStore
from engine.config import load_config

from .test_cap_store_contract import EXP, ask, imp


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    srv = EmbeddedRedis().start()
    yield srv
    srv.stop()


def _client_id(direct: DirectConnections) -> int:
    return int(direct.execute([("CLIENT", "ID")], None)[0])  # type: ignore[call-overload]


def _open_ids(server: EmbeddedRedis) -> set[int]:
    return {int(c["id"]) for c in server.client().client_list()}


def test_sequential_calls_share_one_connection(server: EmbeddedRedis) -> None:
    direct = DirectConnections(server.client(**client_options(1000)))
    first = _client_id(direct)
    assert [_client_id(direct) for _ in range(5)] == [first] * 5
    direct.close()
    assert first not in _open_ids(server)  # closed by close()


def test_replies_in_order_and_an_error_reply_in_its_place(server: EmbeddedRedis) -> None:
    direct = DirectConnections(server.client(**client_options(1000)))
    direct.execute([("SET", "direct:k", "v")], None)
    replies = direct.execute(
        [("GET", "direct:k"), ("EVALSHA", "0" * 40, 0), ("INCRBY", "direct:n", 7)], 1.0
    )
    assert replies[0] == b"v" and replies[2] == 7
    assert isinstance(replies[1], redis.exceptions.NoScriptError)
    # the connection stays in use: it read every reply
    assert _client_id(direct) == _client_id(direct)
    server.client().delete("direct:k", "direct:n")
    direct.close()


def test_a_connection_the_server_closed_is_made_again(server: EmbeddedRedis) -> None:
    """An idle connection killed by the server (a restart, a client timeout) is noticed before
    use, as redis-py's pool does: the call goes through on a new connection."""
    direct = DirectConnections(server.client(**client_options(1000)))
    old = _client_id(direct)
    assert server.client().client_kill_filter(_id=str(old)) == 1
    new = _client_id(direct)
    assert new != old
    direct.close()


def test_a_failed_call_closes_its_connection(server: EmbeddedRedis) -> None:
    """A call that times out does not put its connection back: its late reply is never read
    as the next call's."""
    direct = DirectConnections(server.client(**client_options(1000)))
    before = _client_id(direct)
    spin = (  # a second by the microsecond clock (whole seconds could end at once)
        "local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end "
        "local start = now() while now() - start < 1 do end return 1"
    )
    with pytest.raises(redis.exceptions.TimeoutError):
        direct.execute([("EVAL", spin, 0)], 0.1)
    after = _client_id(direct)  # waits for the script to end, on a new connection
    assert after != before
    assert direct.execute([("PING",)], 1.0) == [b"PONG"]
    direct.close()


def _child_call(direct: DirectConnections, out: multiprocessing.Queue) -> None:
    out.put(_client_id(direct))


def test_a_forked_child_leaves_the_parents_connections_alone(server: EmbeddedRedis) -> None:
    direct = DirectConnections(server.client(**client_options(1000)))
    parent = _client_id(direct)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    child = ctx.Process(target=_child_call, args=(direct, out))
    child.start()
    child_id = out.get(timeout=30)
    child.join(timeout=30)
    assert child_id != parent
    assert _client_id(direct) == parent  # the parent's connection still answers in order
    direct.close()


def test_a_command_that_cannot_be_packed_spends_no_connection(server: EmbeddedRedis) -> None:
    direct = DirectConnections(server.client(**client_options(1000)))
    before = _client_id(direct)
    with pytest.raises(TypeError):
        direct.execute([("GET", None)], 1.0)
    assert _client_id(direct) == before
    direct.close()


def test_calls_after_close_leave_no_connection_open(server: EmbeddedRedis) -> None:
    direct = DirectConnections(server.client(**client_options(1000)))
    first = _client_id(direct)
    direct.close()
    again = _client_id(direct)  # still answers, on a new connection closed after the call
    assert first not in _open_ids(server) and again not in _open_ids(server)


def test_a_password_and_database_from_the_url_hold_on_these_connections(
    tmp_path: Path,
) -> None:
    """The store's own connections are made with the client's settings: a password and a
    database number in the URL apply to them (the store's keys land in that database)."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret"]
        + ["--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        admin = redis.Redis(port=port, password="s3cret", db=3)
        for _ in range(200):
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        config = load_config()
        url = f"redis://:s3cret@127.0.0.1:{port}/3"
        store = open_store(
            config.model_copy(update={"store": config.store.model_copy(update={"url": url})})
        ).store
        assert isinstance(store, RedisCapStore) and store._direct is not None
        assert store.record([imp(1, 0)]) == 1
        assert ask(store, 5)[1][0, EXP["exp_user_campaign_1h"]] == 1
        assert admin.dbsize() > 0
        assert redis.Redis(port=port, password="s3cret", db=0).dbsize() == 0
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, password="wrong").ping()
        store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_batch_longer_than_the_deadline_to_take_in_is_recorded() -> None:
    """A socket timeout bounds each piece of a write, not the whole: 3,000 impressions in one
    batch take Redis longer than a 50 ms deadline to take in (its socket buffer fills while it
    runs the scripts), and are all recorded."""
    config = load_config()
    store_cfg = config.store.model_copy(update={"url": "", "deadline_ms": 50, "prefix": "big"})
    store = open_store(config.model_copy(update={"store": store_cfg}))
    try:
        events = [imp(f"big-{k}", -k % 600, user_id=f"u{k % 50}") for k in range(3000)]
        assert store.record(events) == 3000
    finally:
        store.close()
