"""Exposure counters of a simulated policy: per family key, the times of its latest exposures.

A *family* (``engine.caps.rules.Family``) groups exposures by scope and target, optionally on
one touchpoint or slot. Each key of a family (one user x one campaign, one household, ...)
keeps a ring of its latest ``depth`` exposure times, which answers "how many exposures in
``(t - window, t)``" exactly up to ``depth`` (enough for a cap whose limit is at most
``depth``, and for fatigue, which grows with the logarithm of the count), plus a lifetime
count. Reads and writes are vectorised over the rows of a block; no loop runs over rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NEVER = np.iinfo(np.int64).min // 4
Rows = np.ndarray | slice  # log rows: indices, or a contiguous range


@dataclass
class FamilyCounter:
    """The counters of one family.

    Attributes:
        key: per log row, its key in this family (-1: the family does not apply to the row,
            e.g. another slot, or no household id).
        depth: exposure times kept per key.
    """

    key: np.ndarray
    depth: int
    keys: int = 0  # keys at least (more than the rows use: earlier exposures' keys)
    ring: np.ndarray = field(init=False)
    head: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        keys = max(int(self.key.max()) + 1 if len(self.key) else 0, self.keys, 1)
        self.ring = np.full((keys, self.depth), NEVER, dtype=np.int64)
        self.head = np.zeros(keys, dtype=np.int64)
        self._start = (self.ring.copy(), self.head.copy())

    def start_here(self) -> None:
        """Make the exposures recorded so far the state ``reset`` returns to."""
        self._start = (self.ring.copy(), self.head.copy())

    def reset(self) -> None:
        """Back to the start: no exposures, or those recorded before ``start_here``."""
        self.ring[:], self.head[:] = self._start

    def count(self, rows: Rows, t: np.ndarray, lower: np.ndarray, inclusive: bool) -> np.ndarray:
        """Per row, its key's exposures in ``(lower, t)`` (``[lower, t)`` if ``inclusive``),
        saturating at ``depth``; 0 where the family does not apply."""
        k = self.key[rows]
        ok = k >= 0
        times = self.ring[np.where(ok, k, 0)]
        after = times >= lower[:, None] if inclusive else times > lower[:, None]
        n = (after & (times < t[:, None])).sum(axis=1)
        return np.where(ok, n, 0)

    def lifetime(self, rows: Rows) -> np.ndarray:
        """Per row, every exposure its key ever had (0 where the family does not apply)."""
        k = self.key[rows]
        return np.where(k >= 0, self.head[np.where(k >= 0, k, 0)], 0)

    def latest(self, rows: Rows) -> np.ndarray:
        """Per row, its key's latest exposure time (``NEVER`` if none or not applicable)."""
        k = self.key[rows]
        last = self.ring[np.where(k >= 0, k, 0)].max(axis=1)
        return np.where(k >= 0, last, NEVER)

    def add(self, rows: Rows, t: np.ndarray) -> None:
        """Record exposures of ``rows`` at times ``t`` (a key may repeat within a call)."""
        self.add_keys(self.key[rows], t)

    def add_keys(self, k: np.ndarray, t: np.ndarray) -> None:
        """Record exposures of keys ``k`` (-1: none) at times ``t``, in time order per key."""
        keep = k >= 0
        k, t = k[keep], t[keep]
        if not len(k):
            return
        order = np.argsort(k, kind="stable")
        k, t = k[order], t[order]
        first = np.r_[True, k[1:] != k[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
        rank = np.arange(len(k)) - start
        self.ring[k, (self.head[k] + rank) % self.depth] = t
        np.add.at(self.head, k, 1)
