"""The Redis key layout of the cap store: a versioned contract, written in one place.

Changing any byte of a key here, or of a value's encoding (``lua.py``), changes where and how
live counters are found: bump ``KEY_VERSION`` and migrate. ``tests/unit/test_cap_keys.py`` pins
the exact bytes.

Layout (``P`` = configured prefix, ``T`` = hash tag, ``FAM`` = counter family, ``S`` = scope id):

* ``P:v3:{T}:c:FAM:S``  hash, field = target id (``*`` for the target any) -> the target's
  *counter*, one binary string: lifetime count, day counts, hour counts and the sorted
  impression times its family's readers need (``keep.py``; ``lua.py`` for the bytes). One HMGET
  reads a family for all of a request's candidates.
* ``P:v3:{T}:b:SC:S:TG``  hash, field = campaign id, advertiser id or category -> end of a
  block set by the user's negative feedback or a conversion (epoch microseconds, event time;
  ``caps.block_rules``); ``SC`` scope letter, ``TG`` target.
* ``P:v3:{T}:i:DAY``  string: the *fingerprints* of the impressions that arrived on that UTC day
  (days since the epoch; the arrival clock), 8 bytes each (``fingerprint``), appended: the
  idempotency markers of one household and day in one value. It lives
  ``store.dedup_horizon`` + 1 day from when it is made.
* ``P:layout``  the layout version of everything under ``P`` (see ``connect.check_layout``).

``FAM`` is the scope letter (u, h, d), the target (cr, ad, cmp, adv, cat, cmpt, any) and an optional
filter (``tp=ott`` or ``sl=ott_boot``), joined by dots: ``u.cmp``, ``h.any.sl=ott_boot``.

The hash tag ``T`` is the household id (``h=...``), or the user id (``u=...``) for users without
a household, so every key one request or one impression touches lives in one Redis Cluster slot
and one Lua script can serve it. Key parts are percent-encoded (``%``, ``:``, ``{``, ``}``), so
any string is a safe id and different ids never share a key.
"""

from __future__ import annotations

import hashlib

from engine.caps.rules import Family

KEY_VERSION = 3
_SCOPE = {"user": "u", "household": "h", "device": "d"}
_TARGET = {
    "creative": "cr",
    "ad": "ad",
    "campaign": "cmp",
    "advertiser": "adv",
    "category": "cat",
    "competitor": "cmpt",
    "any": "any",
}


def escape(value: str) -> str:
    """Percent-encode the characters that structure keys."""
    return value.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def family_code(family: Family) -> str:
    """Short, stable name of a counter family."""
    parts = [_SCOPE[family.scope], _TARGET[family.target]]
    if family.touchpoint is not None:
        parts.append(f"tp={family.touchpoint}")
    if family.slot is not None:
        parts.append(f"sl={family.slot}")
    return ".".join(parts)


class KeySpace:
    """Builds every key of the store under one prefix (tests use a prefix of their own)."""

    def __init__(self, prefix: str = "admatch") -> None:
        self.root = prefix
        self.prefix = f"{prefix}:v{KEY_VERSION}"

    def layout(self) -> str:
        """The key naming the layout version of the data under this prefix (written once by
        the first store to open it; a store of another version refuses to start)."""
        return f"{self.root}:layout"

    def tag(self, household_id: str | None, user_id: str) -> str:
        """The hash tag shared by all keys of one household (or of a user with none)."""
        return f"h={escape(household_id)}" if household_id else f"u={escape(user_id)}"

    def base(self, tag: str) -> str:
        """The start shared by every key of one hash tag."""
        return f"{self.prefix}:{{{tag}}}"

    def counters(self, tag: str, family: Family, scope_id: str) -> str:
        """Counters per target id: lifetime, day counts and recent impression times."""
        return self.counters_at(self.base(tag), family_code(family), escape(scope_id))

    @staticmethod
    def counters_at(base: str, code: str, scope: str) -> str:
        """:meth:`counters` from parts already built (base, family code, escaped scope id)."""
        return f"{base}:c:{code}:{scope}"

    def blocks(self, tag: str, scope: str, scope_id: str, target: str) -> str:
        """Blocks from negative feedback or conversions: field = target id, value = block end."""
        return f"{self.base(tag)}:b:{_SCOPE[scope]}:{escape(scope_id)}:{_TARGET[target]}"

    def markers(self, tag: str, day: int) -> str:
        """The idempotency markers of one household (tag) and event day (days since epoch)."""
        return f"{self.base(tag)}:i:{day}"


def fingerprint(impression_id: str) -> bytes:
    """An impression id's idempotency marker: the first 8 bytes of its BLAKE2b digest. Two ids
    of one household and day share one with a probability of about n**2 / 2**65 (n ids: one in
    7 * 10**13 for 1,000)."""
    return hashlib.blake2b(impression_id.encode(), digest_size=8).digest()
