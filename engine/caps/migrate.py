"""Carry a cap store an earlier key layout wrote to this admatch's (``keys.KEY_VERSION``), in
place: ``admatch store-migrate``. Without it a new layout refuses the old data
(``connect.check_layout``) and its counts, feedback blocks and idempotency markers are out of
reach of the new admatch: a broken promise to every user who hid an ad.

What layouts 6 and 7 wrote differently from layout 8 (``keys.py``, ``eventlog.py``):

* every key's name carries its version;
* the dictionary (``n``) and the idempotency markers (``i:DAY``) hold 8-byte BLAKE2b digests,
  where layout 8 keeps their first ``FP_BYTES``: each entry is cut (the ids are not needed);
* layout 6's day counts (``s``) are runs of whole numbers (code, lifetime, days, then a gap and
  a count a day, oldest first); they are decoded and written as layout 8's runs
  (``eventlog._day_bytes``), the same records.

The log, its tail, the tuples, the generation and the block hashes keep their bytes and are
renamed (``RENAME`` keeps their expiry; the keys of a household share its hash tag, so a
rename stays in its cluster slot). A rewritten key keeps its time to live. The layout marker
is set last: a migration cut short (a crash, a timeout) is run again and carries what is left,
and meanwhile no admatch of either layout opens the store. Every admatch using the store must
be stopped first: one still writing the old layout would write where the new one no longer
reads (the embedded server's state directory takes one admatch at a time, so there it cannot
happen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from engine.caps.eventlog import GROUP, LIFETIME, _day_bytes
from engine.caps.keys import FP_BYTES, KEY_VERSION, KeySpace
from engine.errors import NotReady

MIGRATES_FROM = (6, 7)
_OLD_FP = 8  # the digest bytes layouts 3 to 7 kept
_RENAMED = ("e", "f", "t", "g")


@dataclass(frozen=True)
class Migrated:
    """What a migration did: the layout it found (``KEY_VERSION`` when there was nothing to
    do) and the keys it renamed and rewrote."""

    found: int
    renamed: int = 0
    rewritten: int = 0


def cut(data: bytes, what: str) -> bytes:
    """8-byte digests (a dictionary's entries, a day's markers) cut to their first
    ``FP_BYTES`` bytes."""
    if len(data) % _OLD_FP:
        raise ValueError(f"{what}: {len(data)} bytes, not whole 8-byte digests")
    entries = np.frombuffer(data, dtype=np.uint8).reshape(-1, _OLD_FP)
    return entries[:, :FP_BYTES].tobytes()


def _numbers(body: bytes, start: int, end: int) -> list[int]:
    """The unsigned LEB128 numbers of ``body[start:end]``."""
    out, value, shift = [], 0, 0
    for byte in body[start:end]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            out.append(value)
            value, shift = 0, 0
    if shift:
        raise ValueError(f"day counts: a number runs past its group at byte {end}")
    return out


def layout6_records(data: bytes) -> tuple[np.ndarray, ...]:
    """Layout 6's day-count string as records (family, scope, target codes, day or
    ``LIFETIME``, count): its header (groups, base day: the oldest day), its groups
    (``GROUP``), then per group and target a run of LEB128 numbers: the code, the lifetime
    count (0: none), the number of days, then per day (oldest first) the days after the
    previous one (the first: after the base day) and the count."""
    if not data:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    n = int.from_bytes(data[:4], "little")
    base = int.from_bytes(data[4:8], "little", signed=True)
    head = np.frombuffer(data, dtype=GROUP, count=n, offset=8)
    body = data[8 + GROUP.itemsize * n :]
    rows: list[tuple[int, int, int, int, int]] = []
    for family, scope, start, size in head.tolist():
        if start + size > len(body):
            raise ValueError(f"day counts: group {family}/{scope} past the body")
        numbers, at = _numbers(body, start, start + size), 0
        while at < len(numbers):
            target, life, k = numbers[at : at + 3]  # a short run: ValueError, unpacking
            if at + 3 + 2 * k > len(numbers):
                raise ValueError(f"day counts: a run of group {family}/{scope} past its end")
            if life:
                rows.append((family, scope, target, LIFETIME, life))
            day, end = base, at + 3 + 2 * k
            gaps, counts = numbers[at + 3 : end : 2], numbers[at + 4 : end : 2]
            for gap, count in zip(gaps, counts, strict=True):
                day += gap
                rows.append((family, scope, target, day, count))
            at += 3 + 2 * k
    columns = np.asarray(rows, dtype=np.int64).reshape(-1, 5).T
    return tuple(columns)


def day_counts(data: bytes, version: int) -> bytes:
    """A day-count string of ``version`` in this layout's bytes."""
    if version != 6:
        return data  # layout 7 wrote them as layout 8 does
    family, scope, target, day, count = layout6_records(data)
    return _day_bytes(family, scope, target, day, count)


def _new_value(kind: str, value: bytes, version: int, name: str) -> bytes:
    if kind == "n" or kind.startswith("i:"):
        return cut(value, name)
    if kind == "s":
        return day_counts(value, version)
    raise NotReady(f"cap store migration: {name!r} is no key of layout v{version}")


def migrate(client: Any, keys: KeySpace) -> Migrated:
    """Carry the store under ``keys.root`` to this layout (see the module doc).

    Raises:
        NotReady: the store holds a layout this admatch cannot carry (named), or a key of the
            old layout it does not know.
        ValueError: a value is damaged (named).
    """
    found = client.get(keys.layout())
    if found is None:
        return Migrated(KEY_VERSION)
    version = int(found)
    if version == KEY_VERSION:
        return Migrated(version)
    if version not in MIGRATES_FROM:
        raise NotReady(
            f"the cap store holds key layout v{version} under prefix {keys.root!r}; this "
            f"admatch carries v{', v'.join(map(str, MIGRATES_FROM))} to v{KEY_VERSION} only"
        )
    old = f"{keys.root}:v{version}:"
    renamed = rewritten = 0
    for key in client.scan_iter(match=f"{old}*", count=10_000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        rest = name[len(old) :]
        kind = rest[rest.index("}:") + 2 :]  # ids in a tag are escaped: its first "}:" ends it
        new = f"{keys.prefix}:{rest}"
        if kind in _RENAMED or kind.startswith("b:"):
            try:
                client.rename(name, new)
            except redis.ResponseError as exc:  # it expired since the scan found it
                if "no such key" not in str(exc).lower():
                    raise
                continue
            renamed += 1
            continue
        value = client.get(name)
        if value is None:
            continue  # expired meanwhile
        ttl_ms = client.pttl(name)
        client.set(new, _new_value(kind, value, version, name), px=ttl_ms if ttl_ms > 0 else None)
        client.delete(name)
        rewritten += 1
    client.set(keys.layout(), KEY_VERSION)
    return Migrated(version, renamed, rewritten)
