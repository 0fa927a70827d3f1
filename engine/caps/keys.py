"""The Redis key layout of the cap store: a versioned contract, written in one place.

Changing any byte of a key here changes where live counters are found: bump ``KEY_VERSION``
and migrate. ``tests/unit/test_cap_keys.py`` pins the exact bytes.

Layout (``P`` = configured prefix, ``T`` = hash tag, ``FAM`` = counter family, ``S`` = scope id).
Each key is a hash whose fields are target ids (``*`` for the target any), so one HMGET reads a
family for all of a request's candidates:

* ``P:v1:{T}:r:FAM:S``  field -> the target's impression times within the retention (7 days by
  default): sorted 16-digit zero-padded epoch microseconds, concatenated; exact rolling windows.
  (For the target any, a sorted set: member impression id, score time.)
* ``P:v1:{T}:d:FAM:S``  field -> ``day:count`` pairs (days since epoch, UTC), 181 days: windows
  up to 180 days, exact to the day.
* ``P:v1:{T}:l:FAM:S``  field -> lifetime count.
* ``P:v1:{T}:b:SC:S:TG``  field -> end of a block set by the user's negative feedback (epoch
  microseconds, event time); ``SC`` scope letter, ``TG`` target (cmp or adv).
* ``P:v1:{T}:i:IMPRESSION_ID``  marks an impression as recorded (idempotency).

``FAM`` is the scope letter (u, h, d), the target (cr, ad, cmp, adv, cat, any) and an optional
filter (``tp=ott`` or ``sl=ott_boot``), joined by dots: ``u.cmp``, ``h.any.sl=ott_boot``.

The hash tag ``T`` is the household id (``h=...``), or the user id (``u=...``) for users without
a household, so every key one request or one impression touches lives in one Redis Cluster slot
and one Lua script can serve it. Key parts are percent-encoded (``%``, ``:``, ``{``, ``}``), so
any string is a safe id and different ids never share a key.
"""

from __future__ import annotations

from engine.caps.rules import Family

KEY_VERSION = 1
_SCOPE = {"user": "u", "household": "h", "device": "d"}
_TARGET = {
    "creative": "cr",
    "ad": "ad",
    "campaign": "cmp",
    "advertiser": "adv",
    "category": "cat",
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
        self.prefix = f"{prefix}:v{KEY_VERSION}"

    def tag(self, household_id: str | None, user_id: str) -> str:
        """The hash tag shared by all keys of one household (or of a user with none)."""
        return f"h={escape(household_id)}" if household_id else f"u={escape(user_id)}"

    def _base(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}"

    def recent(self, tag: str, family: Family, scope_id: str) -> str:
        """Impression times per target within the retention."""
        return f"{self._base(tag)}:r:{family_code(family)}:{escape(scope_id)}"

    def days(self, tag: str, family: Family, scope_id: str) -> str:
        """Day counts per target (181 days)."""
        return f"{self._base(tag)}:d:{family_code(family)}:{escape(scope_id)}"

    def lifetime(self, tag: str, family: Family, scope_id: str) -> str:
        """Lifetime counts per target."""
        return f"{self._base(tag)}:l:{family_code(family)}:{escape(scope_id)}"

    def blocks(self, tag: str, scope: str, scope_id: str, target: str) -> str:
        """Blocks from negative feedback: field = target id, value = block end."""
        return f"{self._base(tag)}:b:{_SCOPE[scope]}:{escape(scope_id)}:{_TARGET[target]}"

    def impression(self, tag: str, impression_id: str) -> str:
        """The idempotency marker of one impression."""
        return f"{self._base(tag)}:i:{escape(impression_id)}"
