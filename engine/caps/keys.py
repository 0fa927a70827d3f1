"""The Redis key layout of the cap store: a versioned contract, written in one place.

Changing any byte of a key here, or of a value's encoding (``eventlog.py``), changes where and
how live data is found: bump ``KEY_VERSION`` and migrate. ``tests/unit/test_cap_keys.py`` pins
the exact bytes.

Layout 8 (``P`` = configured prefix, ``T`` = hash tag): a household's impressions are one event
log with a dictionary of its ids (``eventlog.py`` has the bytes and computes every answer
from them), so what it takes grows with its impressions of the last days, not with the number
of families, rules or targets:

* ``P:v8:{T}:e``  string: the event log, 12 bytes an impression, appended 64 at a time from:
* ``P:v8:{T}:f``  string: the log's tail, its latest impressions (fewer than 64), appended;
  the log reads as ``e`` then ``f``. (Layout 4 appended to ``e`` alone, which copied the whole
  log into a string of its size at every write.)
* ``P:v8:{T}:n``  string: the dictionary, the ``FP_BYTES``-byte fingerprints of the ids the log
  and the summaries use (``fingerprint``), appended; an id's code is its position. (Layout 7
  and before: 8 bytes.)
* ``P:v8:{T}:t``  string: the tuples (an ad's ids; an impression's context: user, device,
  touchpoint, slot) as codes.
* ``P:v8:{T}:s``  string: the day and lifetime counts of the impressions folded out of the log,
  per target a run of LEB128 numbers, a day of a small count one byte. (Layout 5 had 16-byte
  events, user and device codes in each, and a 6-byte record per target and day: 5.3 KiB more
  a user on issue 18's traffic; layout 6 two numbers a day and every code whole.)
* ``P:v8:{T}:g``  integer: the tag's generation, raised by every fold and block (a
  reservation's check holds only if neither the log nor the generation moved).
* ``P:v8:{T}:b:SC:S:TG``  hash, field = campaign id, advertiser id or category -> end of a
  block set by the user's negative feedback or a conversion (epoch microseconds, event time;
  ``caps.block_rules``); ``SC`` scope letter, ``TG`` target.
* ``P:v8:{T}:i:DAY``  string: the *fingerprints* of the impressions that arrived on that UTC day
  (days since the epoch; the arrival clock), ``FP_BYTES`` each, appended: the idempotency markers
  of one household and day in one value. It lives ``store.dedup_horizon`` + 1 day from when it
  is made.
* ``P:layout``  the layout version of everything under ``P`` (see ``connect.check_layout``).

The hash tag ``T`` is the household id (``h=...``), or the user id (``u=...``) for users without
a household, so every key one request or one impression touches lives in one Redis Cluster slot
and one Lua script can serve it. Key parts are percent-encoded (``%``, ``:``, ``{``, ``}``), so
any string is a safe id and different ids never share a key. ``family_code`` names a family in
the summaries (the fingerprint of its code is its id there).
"""

from __future__ import annotations

import hashlib

from engine.caps.rules import Family

KEY_VERSION = 8
# the bytes of an id's fingerprint (the dictionary) and of an impression's marker: two of n
# ids of one household (one day's impressions) share one with a probability of about
# n**2 / 2**49 (2 * 10**-10 for a household of 343 ids, 2 * 10**-9 for a day of 1,000
# impressions): 8 bytes made that 2**16 times less likely, at 2 bytes more an id and a marker
FP_BYTES = 6
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

    def parts(self, tag: str) -> list[str]:
        """The keys of a tag's log, dictionary, tuples, day counts, generation and the log's
        tail, in this order (the scripts read them so)."""
        base = self.base(tag)
        return [f"{base}:{part}" for part in ("e", "n", "t", "s", "g", "f")]

    def blocks(self, tag: str, scope: str, scope_id: str, target: str) -> str:
        """Blocks from negative feedback or conversions: field = target id, value = block end."""
        return f"{self.base(tag)}:b:{_SCOPE[scope]}:{escape(scope_id)}:{_TARGET[target]}"

    def markers(self, tag: str, day: int) -> str:
        """The idempotency markers of one household (tag) and event day (days since epoch)."""
        return f"{self.base(tag)}:i:{day}"


def fingerprint(value: str) -> bytes:
    """An id's fingerprint (the dictionary's entries) or an impression id's idempotency marker:
    the first ``FP_BYTES`` bytes of its 8-byte BLAKE2b digest (see there for the chance that two
    share one). Layouts 3 to 7 stored the whole 8 bytes, so their dictionaries and markers
    can be cut to these without the ids."""
    return hashlib.blake2b(value.encode(), digest_size=8).digest()[:FP_BYTES]
