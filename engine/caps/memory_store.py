"""An in-memory cap store: the reference backend (tests, single-process replays and tuning). It
executes the same plans as the Redis store with the same semantics: exact windows over event
times, hour and day buckets for the bucketed feature windows, day buckets for long windows,
idempotency by impression id, blocks that end at the feedback time plus the block duration
(event time). One lock makes every call atomic. It keeps all impressions in memory, so it is not
for a fleet of servers.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from engine.caps.plan import DAY_US, US, Plan, impression_writes, micros
from engine.caps.rules import (
    BlockRule,
    CapRule,
    CapsConfig,
    Family,
    GapRule,
    competitor_ids,
)
from engine.caps.store import (
    BLOCK_REFUSAL,
    Answers,
    Attempt,
    CapReading,
    Check,
    Feedback,
    Impression,
    StoreUnavailable,
    block_writes,
    place,
    refusal,
)
from engine.errors import AdmatchError


class MemoryCapStore:
    """See :class:`engine.caps.store.CapStore`."""

    def __init__(
        self,
        rules: list[CapRule],
        gaps: list[GapRule],
        blocks: list[BlockRule],
        competing: Mapping[str, str] | None = None,
    ) -> None:
        """``competing``: category -> its competition label (``CapsConfig.competitor_of``)."""
        self.rules, self.gaps, self.blocks = rules, gaps, blocks
        self.competing = dict(competing or {})
        self._times: dict[tuple[Family, str, str], list[int]] = defaultdict(list)
        self._seen: set[tuple[str | None, str, str]] = set()  # see _marker
        self._blocks: dict[tuple[str, str, str, str], int] = {}
        self._lock = threading.Lock()

    def _answers(self, plan: Plan, inclusive: bool) -> Answers:
        """Like the Redis READ; ``inclusive`` counts impressions at or after ``t`` too."""
        matrices = Answers(plan)
        t, day_t = plan.t_us, plan.t_us // DAY_US
        for lk in plan.lookups:
            scope_id, answers = plan.scope_id(lk), matrices[lk.group]
            for f, target in enumerate(plan.fields[lk.group]):
                times = self._times.get((lk.family, scope_id, target))
                if not times:
                    continue  # the defaults stand
                hi = len(times) if inclusive else bisect_left(times, t)
                values = [hi - bisect_right(times, t - w * US) for w in lk.windows]
                for d in lk.day_windows:
                    first = 0 if d == 0 else (day_t - d + 1) * DAY_US
                    values.append(len(times) - bisect_left(times, first))
                for hours, k in lk.buckets:  # from the start of the k-th hour (day) back
                    size = hours * 3_600 * US
                    values.append(hi - bisect_left(times, (t // size - k + 1) * size))
                if lk.last:  # the latest within the lookback (``Lookup.last``)
                    recent = hi and times[hi - 1] >= t - plan.shape.latest_lookback_s * US
                    values.append(times[hi - 1] if recent else -1)
                answers[f, lk.offset : lk.offset + lk.width] = values
        return matrices

    def _read(self, plan: Plan, inclusive: bool = False) -> tuple[Answers, np.ndarray]:
        ids = {"user": plan.user_id, "household": plan.household_id}
        flags = [
            np.asarray(
                [
                    any(
                        self._blocks.get((s, str(ids[s]), spec.target, f), -1) > plan.t_us
                        for s in spec.scopes
                    )
                    for f in plan.block_fields(spec)
                ],
                dtype=bool,
            )
            for spec in plan.shape.blocks
        ]
        return self._answers(plan, inclusive), plan.blocked(flags)

    def read(self, plan: Plan, budget_s: float | None = None) -> CapReading:
        """See :class:`CapStore` (in memory: nothing to wait for)."""
        with self._lock:
            matrices, blocks = self._read(plan)
        return place(plan, matrices, blocks)

    def read_many(
        self, plans: Sequence[Plan], budget_s: float | None = None
    ) -> list[CapReading | AdmatchError]:
        """See :class:`CapStore`: every plan under one hold of the lock."""
        with self._lock:
            answers = [self._read(plan) for plan in plans]
        return [place(plan, m, b) for plan, (m, b) in zip(plans, answers, strict=True)]

    @staticmethod
    def _marker(imp: Impression) -> tuple[str | None, str, str]:
        """An impression id is unique within its household (or its user's, without one), as
        the Redis store's idempotency markers, which live under the household's hash tag."""
        return (imp.household_id, "" if imp.household_id else imp.user_id, imp.impression_id)

    def _record(self, imp: Impression) -> int:
        marker = self._marker(imp)
        if marker in self._seen:
            return 0
        self._seen.add(marker)
        t = micros(imp.ts)
        for fam, scope_id, field in impression_writes(
            competitor_ids(imp.ids(), self.competing),
            imp.touchpoint,
            imp.slot,
            self.rules,
            self.gaps,
        ):
            insort(self._times[(fam, scope_id, field)], t)
        return 1

    def record(self, impressions: list[Impression]) -> int:
        """See :class:`CapStore`."""
        with self._lock:
            return sum(self._record(imp) for imp in impressions)

    def check_and_record(
        self, attempts: Sequence[Attempt], budget_s: float | None = None
    ) -> list[int | StoreUnavailable]:
        """See :class:`CapStore` (in memory: every attempt under one hold of the lock)."""
        with self._lock:
            return [self._check_and_record(*attempt) for attempt in attempts]

    def _check_and_record(self, impression: Impression, plan: Plan, checks: list[Check]) -> int:
        if self._marker(impression) in self._seen:
            return 0
        matrices, blocks = self._read(plan, inclusive=True)
        if blocks.any():
            return BLOCK_REFUSAL
        return refusal(plan, checks, matrices) or self._record(impression)

    def block(self, feedback: list[Feedback]) -> int:
        """See :class:`CapStore`."""
        n = 0
        with self._lock:
            for w in block_writes(self.blocks, feedback):
                key = (w.scope, w.scope_id, w.target, w.target_id)
                self._blocks[key] = max(self._blocks.get(key, -1), w.until_us)
                n += 1
        return n

    def configure(self, caps: CapsConfig) -> None:
        """See :class:`CapStore`."""
        with self._lock:
            self.rules, self.gaps, self.blocks = caps.rules, caps.gap_rules, caps.block_rules
            self.competing = dict(caps.competitor_of)

    def ping(self, budget_s: float | None = None) -> None:
        """See :class:`CapStore`: in memory, always there."""

    def close(self) -> None:
        """Nothing to release."""
