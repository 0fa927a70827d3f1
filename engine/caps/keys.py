"""The Redis key layout of the cap store: a versioned contract, written in one place.

Changing any byte of a key here changes where live counters are found: bump ``KEY_VERSION``
and migrate. ``tests/unit/test_cap_keys.py`` pins the exact bytes.

Layout (``P`` = configured prefix, ``T`` = hash tag):

* ``P:v1:{T}:e:FAM:SCOPE_ID:TARGET_ID``   sorted set of impression ids scored by their time
  (epoch microseconds), kept for ``retention`` (7 days by default): exact rolling windows.
* ``P:v1:{T}:d:FAM:SCOPE_ID:TARGET_ID``   hash of impression counts per UTC day (field = days
  since epoch) and the lifetime count (field ``L``): windows up to 180 days, exact to the day.
* ``P:v1:{T}:b:SCOPE:SCOPE_ID:TARGET:TARGET_ID``   a block set by the user's negative feedback.
* ``P:v1:{T}:i:IMPRESSION_ID``            marks an impression as recorded (idempotency).

``FAM`` names the counter family: scope letter (u, h, d), target (cr, ad, cmp, adv, cat, any)
and an optional filter (``tp=ott`` or ``sl=ott_boot``), joined by dots: ``u.cmp``,
``h.any.sl=ott_boot``. ``TARGET_ID`` is ``*`` for the target ``any``.

The hash tag ``T`` is the household id (``h=...``), or the user id (``u=...``) for users without
a household, so every key one request or one impression touches lives in one Redis Cluster slot
and one Lua script can serve it. Ids are percent-encoded (``%``, ``:``, ``{``, ``}``), so any
string is a safe id and different ids never share a key.
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

    def events(self, tag: str, family: Family, scope_id: str, target_id: str | None) -> str:
        """Sorted set of a family's impressions for one scope id and target id."""
        target = "*" if target_id is None else escape(target_id)
        return f"{self._base(tag)}:e:{family_code(family)}:{escape(scope_id)}:{target}"

    def days(self, tag: str, family: Family, scope_id: str, target_id: str | None) -> str:
        """Day-bucket hash (and lifetime count) of the same counter."""
        target = "*" if target_id is None else escape(target_id)
        return f"{self._base(tag)}:d:{family_code(family)}:{escape(scope_id)}:{target}"

    def block(self, tag: str, scope: str, scope_id: str, target: str, target_id: str) -> str:
        """A block from negative feedback: this scope id must not see this target."""
        return (
            f"{self._base(tag)}:b:{_SCOPE[scope]}:{escape(scope_id)}:"
            f"{_TARGET[target]}:{escape(target_id)}"
        )

    def impression(self, tag: str, impression_id: str) -> str:
        """The idempotency marker of one impression."""
        return f"{self._base(tag)}:i:{escape(impression_id)}"
