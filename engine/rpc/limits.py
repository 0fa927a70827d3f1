"""Bounds on what one message may carry, checked when it is decoded, before any work.

Every repeated field and every string of the contract has a bound (the configurable ones are
keys of ``[server]``; docs/operations.md lists them all). A message over one is refused with
``InvalidArgument`` naming the field as sent, its size and the bound, so a client learns what
to change and the server never spends time or memory on it (a request of 100,000 campaign caps
stalled a worker for 3 s before these bounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.config import ServerConfig
from engine.errors import InvalidArgument, shown

WINDOW_CHARS = 16  # a cap window: "90m", "24h", "30d", "lifetime"
PATH_CHARS = 4096  # ReloadModel's paths (PATH_MAX)


@dataclass(frozen=True)
class Limits:
    """The bounds of one server (``from_config``); the defaults are the shipped config's."""

    candidates: int = 1000
    campaign_caps: int = 256
    interests: int = 64
    string_chars: int = 128
    events: int = 10_000
    blocked: int = 256

    @classmethod
    def from_config(cls, server: ServerConfig) -> Limits:
        """The bounds a server's config sets."""
        return cls(
            candidates=server.max_candidates,
            campaign_caps=server.max_campaign_caps,
            interests=server.max_interests,
            string_chars=server.max_string_chars,
            events=server.max_events,
            blocked=server.max_blocked,
        )

    def count(self, field: str, n: int, bound: int, key: str) -> None:
        """Refuse ``n`` entries of a repeated ``field`` above ``bound`` (config ``key``).

        Raises:
            InvalidArgument: ``field: 1,200 entries, at most 1,000 (server.max_candidates)``.
        """
        if n > bound:
            raise InvalidArgument(field, f"{n:,} entries, at most {bound:,} (server.{key})")

    def entries(self, field: str, values: Sequence[str], bound: int, key: str) -> None:
        """A repeated string field: at most ``bound`` entries (config ``key``), each within
        ``string_chars``; entry ``i`` is named ``field[i]``."""
        self.count(field, len(values), bound, key)
        self.texts(values, lambda i: f"{field}[{i}]")

    def text(self, field: str, value: str, bound: int | None = None) -> None:
        """Refuse a string longer than ``bound`` characters (default: ``string_chars``)."""
        limit = self.string_chars if bound is None else bound
        if len(value) > limit:
            raise InvalidArgument(field, _too_long(value, limit, bound is None))

    def texts(self, values: Sequence[str], field: Callable[[int], str]) -> None:
        """Refuse any of ``values`` longer than ``string_chars``; ``field(i)`` names value
        ``i`` (one C-level pass; the search for the culprit only when there is one)."""
        if values and max(map(len, values)) > self.string_chars:
            i = next(i for i, v in enumerate(values) if len(v) > self.string_chars)
            raise InvalidArgument(field(i), _too_long(values[i], self.string_chars, True))


def _too_long(value: str, bound: int, configurable: bool) -> str:
    key = " (server.max_string_chars)" if configurable else ""
    return f"{len(value):,} characters ({shown(value)}), at most {bound:,}{key}"


DEFAULT_LIMITS = Limits()
