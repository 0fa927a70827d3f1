"""Claiming the port: an ``admatch serve`` shares its port with its own workers and no one else.

The workers listen with SO_REUSEPORT, so that the kernel spreads connections over them. That
option alone would let a second ``admatch serve`` (with its own cap store) join the same port
silently, splitting clients between two stores: a campaign capped at 3 got 6 impressions.
:func:`claim_port`, run by the serving parent before any worker starts, prevents that:

* A guard socket is bound to each address of the host and port *without* SO_REUSEPORT: it
  fails if anyone listens there already (another admatch, any program). Then SO_REUSEPORT is
  set on it, so that the parent's own workers can bind beside it; another process binding
  without the option fails against it. It never listens, so it takes no connections.
* A lock, an abstract unix socket named after the host and port (Linux; scoped to the network
  namespace, as ports are), closes the window in which two servers start together: both
  guards can be bound before either listens, but only one lock.

Both go with the parent's process, however it ends (kill -9 included), so a restart can claim
the port as soon as the old workers have stopped.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from engine.errors import AdmatchError


class PortInUse(AdmatchError):
    """Someone else listens on the port (or another admatch serve is starting on it)."""

    status = "UNAVAILABLE"


@dataclass
class PortClaim:
    """The sockets that hold a host and port for one ``admatch serve`` until released."""

    host: str
    port: int
    sockets: list[socket.socket] = field(default_factory=list)

    def release(self) -> None:
        """Let the port go (also done by the kernel when the process ends)."""
        for s in self.sockets:
            s.close()
        self.sockets.clear()


def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    seen: set[tuple[int, Any]] = set()
    out: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address[0]) not in seen:
            seen.add((family, address[0]))
            out.append((family, address))
    return out


def _guard(family: int, address: tuple[Any, ...], port: int) -> socket.socket:
    guard = socket.socket(family, socket.SOCK_STREAM)
    guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections' TIME_WAIT
    try:
        guard.bind((address[0], port, *address[2:]))
    except OSError:
        guard.close()
        raise
    if hasattr(socket, "SO_REUSEPORT"):
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # our workers may join
    return guard


def _lock(host: str, port: int) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None  # no abstract sockets: the guard alone (a narrow start-up race remains)
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0admatch-serve:{host}:{port}")
    except OSError:
        lock.close()
        raise
    return lock


def claim_port(host: str, port: int) -> PortClaim:
    """Hold ``host:port`` (``port`` 0: a free one, chosen now) for this process and its
    workers.

    Raises:
        PortInUse: another process listens there, or another admatch serve is starting on it
            (the message says which and what to do).
    """
    claim = PortClaim(host, port)
    try:
        for family, address in _addresses(host, port):
            claim.sockets.append(_guard(family, address, claim.port))
            claim.port = claim.sockets[0].getsockname()[1]
        lock = _lock(host, claim.port)
    except OSError as exc:
        claim.release()
        if exc.errno != errno.EADDRINUSE:
            raise PortInUse(f"cannot listen on {host}:{claim.port}: {exc.strerror}") from exc
        raise PortInUse(
            f"port {claim.port} on {host} is in use by another process (another admatch "
            "serve, or any other server): stop it, or choose another port (--port)"
        ) from exc
    if lock is not None:
        claim.sockets.append(lock)
    return claim
