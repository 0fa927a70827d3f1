"""The cap store's own connections to a standalone Redis (``engine/caps/direct.py``)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest
import redis

from engine.caps.connect import client_options
from engine.caps.direct import DirectConnections
from engine.caps.embedded import EmbeddedRedis


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
