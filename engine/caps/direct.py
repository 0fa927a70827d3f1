"""Commands to a standalone Redis straight through connections of its own, not redis-py's pool.

A cap read has 500 us in all (issue 4), and redis-py's way to a reply costs 20-50 us of it
here (BENCHMARKS.md): taking a connection from the pool and giving it back (a lock, a health
check, observability hooks), packing in Python, and setting a socket timeout before each read
and resetting it after. :class:`DirectConnections` keeps its own idle list of redis-py
connections, made as the client's pool makes them (its connection class and settings, so the
URL, TLS, AUTH, SELECT and the handshake stay redis-py's), packs with hiredis and reads under
the socket's own timeout (the store's deadline) unless a call allows less.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import hiredis
import redis

Command = Sequence[Any]  # a command's name and arguments: str, bytes, int or float
# Writes go out in pieces of this size: a socket timeout bounds each piece, not the whole (a
# batch of thousands of impressions takes Redis longer than the deadline to take in), as with
# redis-py's own packing; a few pieces keep a read pipeline to one or two system calls.
WRITE_PIECE = 64 * 1024


class DirectConnections:
    """A thread-safe idle list of connections to one server (list pop and append are atomic).
    A connection whose call fails is closed and dropped, so a late reply is never taken for the
    next call's; after a fork the parent's connections are left to the parent."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._socket_timeout: float | None = None if timeout is None else float(timeout)
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._closed = False

    def _take(self) -> Any:
        if self._pid != os.getpid():
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
            conn.connect()
            return conn
        try:  # as the pool does: an idle connection with something to read was closed by the
            if not conn.can_read():  # server (a restart, a client timeout): connect again
                return conn
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            pass
        conn.disconnect()
        conn.connect()
        return conn

    def execute(self, commands: Sequence[Command], timeout: float | None) -> list[object]:
        """The commands written at once, then their replies in order (an error reply in its
        command's place), all within ``timeout`` seconds (``None``: each read within the
        socket's timeout).

        Raises:
            redis.exceptions.RedisError: no answer (connection lost, timeout).
        """
        packed = memoryview(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        pieces = [packed[i : i + WRITE_PIECE] for i in range(0, len(packed), WRITE_PIECE)]
        conn = self._take()  # after packing: an argument that cannot be packed spends none
        end = None if timeout is None else time.monotonic() + timeout
        try:
            conn.send_packed_command(pieces, check_health=False)
            replies: list[object] = []
            for _ in commands:
                try:
                    replies.append(self._read(conn, end))
                except redis.exceptions.ResponseError as exc:  # the server answered
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        if self._closed:
            conn.disconnect()
        else:
            self._idle.append(conn)
        return replies

    def _read(self, conn: Any, end: float | None) -> object:
        """One reply, by ``end`` (monotonic seconds). Under the socket's own timeout when that
        is soon enough: setting a timeout costs two system calls."""
        if end is None:
            return conn.read_response()
        left = max(end - time.monotonic(), 0.001)
        if self._socket_timeout is not None and left >= self._socket_timeout:
            return conn.read_response()
        return conn.read_response(timeout=left)

    def close(self) -> None:
        """Close the idle connections; those in use close when their call ends. A call after
        this makes a connection again (as redis-py's pool does) and closes it after."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
