"""An in-memory exposure history: the reference counter for online features and replays.

It answers the same questions as the Redis cap store (see ``features.exposure`` for the exact
definitions) from impressions recorded in any order. It keeps every impression, so it is meant
for tests, log replays and single-process tools, not for a fleet of servers.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from features.exposure import (
    EXPOSURE_KEYS,
    EXPOSURE_SCHEMA,
    RECENCY_WINDOW,
    SCOPES,
    WINDOWS_S,
    ExposureKey,
    count_column,
    since_column,
    window_floor,
)
from features.online import CandidateColumns, RequestContext

_US = 1_000_000
_RECENCY = list(WINDOWS_S).index(RECENCY_WINDOW)


def _us(ts: datetime) -> int:
    return int(ts.timestamp()) * _US + ts.microsecond


class ExposureHistory:
    """Impression times per (scope id, target id), kept sorted."""

    def __init__(self) -> None:
        self._times: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)

    def record(
        self,
        ts: datetime,
        ids: dict[str, str | None],
    ) -> None:
        """Record one impression.

        Args:
            ts: when it was shown (UTC-aware).
            ids: ``user_id``, ``household_id``, ``device_id``, ``campaign_id`` and
                ``advertiser_id`` of the impression; null ids are not counted under that id.
        """
        t = _us(ts)
        for key in EXPOSURE_KEYS:
            values = [ids.get(c) for c in key.id_columns]
            if any(v is None for v in values):
                continue
            target = values[1] if len(values) > 1 else ""
            insort(self._times[(key.scope, key.target, str(values[0]), str(target))], t)

    def _window_counts(self, times: list[int], t: int) -> list[int]:
        hi = bisect_left(times, t)
        out = []
        for name in WINDOWS_S:
            low, inclusive = window_floor(t, name)
            out.append(hi - (bisect_left if inclusive else bisect_right)(times, int(low)))
        return out

    def counts(self, request: RequestContext, candidates: CandidateColumns) -> np.ndarray:
        """Exposure matrix (n candidates x ``EXPOSURE_SCHEMA`` columns) for a request."""
        t = _us(request.ts)
        n = len(candidates["ad_id"])
        out: dict[str, np.ndarray] = {}
        for key in EXPOSURE_KEYS:
            scope_id = getattr(request, SCOPES[key.scope])
            out.update(self._key_columns(key, scope_id, candidates, t, n))
        return np.column_stack([out[name] for name in EXPOSURE_SCHEMA.names()])

    def _key_columns(
        self,
        key: ExposureKey,
        scope_id: str | None,
        candidates: CandidateColumns,
        t: int,
        n: int,
    ) -> dict[str, np.ndarray]:
        names = [count_column(key.scope, key.target, w) for w in WINDOWS_S]
        counts = np.zeros((n, len(names)), dtype=np.float64)
        since = np.full(n, np.nan)
        target_col = key.id_columns[1] if len(key.id_columns) > 1 else None
        targets: Sequence[str | None] = (
            list(candidates.get(target_col, [None] * n)) if target_col else [""] * n
        )
        if scope_id is not None:
            for i, target in enumerate(targets):
                if target is None:
                    continue
                times = self._times.get((key.scope, key.target, scope_id, target), [])
                counts[i] = self._window_counts(times, t)
                last = bisect_left(times, t) - 1
                if key.target == "campaign" and counts[i, _RECENCY] > 0:  # one in the window
                    since[i] = (t - times[last]) / _US
        out = {name: counts[:, j] for j, name in enumerate(names)}
        if key.target == "campaign":
            out[since_column(key.scope)] = since
        return out
