"""Filling each request's slot from its eligible candidates, best utility first.

Candidates are ordered by utility (descending), ties broken by ad id, so the same inputs always
give the same answer. A single-ad slot takes the first eligible candidate (vectorised over the
whole batch). A pod takes candidates greedily while it has room (ad count and total duration)
and never two from one advertiser or one category (competitive separation), and the ads it takes
count toward each other's caps (``PodRoom``: a campaign with one exposure left under its cap
gets one ad of the pod, not three); that greedy walk is the one sequential step, and it stops
as soon as the pod is full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from engine.scoring.types import CODE, PodRoom, Reason


@dataclass(frozen=True)
class Capacity:
    """Per request: how many ads and how many seconds the slot takes (NaN: no duration cap)."""

    max_ads: np.ndarray
    max_total_s: np.ndarray

    def pods(self) -> np.ndarray:
        """Per request, whether its slot is a pod (more than one ad or a duration cap)."""
        return (self.max_ads != 1) | ~np.isnan(self.max_total_s)


def select(
    owner: np.ndarray,
    eligible: np.ndarray,
    utility: np.ndarray,
    ad_id: np.ndarray | Sequence[str],
    advertiser: list[str | None],
    category: list[str | None],
    duration_s: np.ndarray,
    capacity: Capacity,
    room: PodRoom | None = None,
    competing: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose the ads of every request.

    Args:
        owner: request index of each row (non-decreasing).
        eligible: rows that passed every eligibility rule.
        utility, ad_id, duration_s: per row (``ad_id``: strings or integer codes, whose
            order breaks ties in utility).
        advertiser, category: per row, for separation in pods (None never conflicts); two
            categories compete when equal or of one ``competing`` group (category -> group:
            ``CapsConfig.competitor_of``).
        capacity: per request.
        room: per row, what its caps leave for the ads of its pod (``None``: nothing shared).

    Returns:
        ``rank`` (1-based among the selected, 0 otherwise) and ``reason`` codes for the
        eligible rows (SELECTED, OUTRANKED, POD_FULL, COMPETITIVE_SEPARATION, or
        FREQUENCY_CAPPED by the pod's own ads; other rows get -1, to be filled by the caller
        with their eligibility reason).
    """
    n = len(owner)
    order = _order(owner, eligible, utility, ad_id)  # the eligible rows only
    rank = np.zeros(n, dtype=np.int64)
    reason = np.full(n, -1, dtype=np.int64)
    reason[eligible] = CODE[Reason.OUTRANKED]
    sorted_owner = owner[order]
    first = np.ones(len(order), dtype=bool)  # the best eligible row of its request
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    single = ~capacity.pods()
    winners = order[first & single[sorted_owner]]
    rank[winners] = 1
    reason[winners] = CODE[Reason.SELECTED]
    pods = np.flatnonzero(~single)
    if len(pods):
        starts = np.searchsorted(sorted_owner, pods, side="left")
        ends = np.searchsorted(sorted_owner, pods, side="right")
        for req, lo, hi in zip(pods, starts, ends, strict=True):
            fill = (order[lo:hi], int(req), capacity, advertiser, category, duration_s, room)
            _fill_pod(*fill, competing or {}, rank, reason)
    return rank, reason


def _order(
    owner: np.ndarray, eligible: np.ndarray, utility: np.ndarray, ad_id: np.ndarray | Sequence[str]
) -> np.ndarray:
    """The eligible rows by request, utility descending (NaN last), ties broken by ad id.

    Only the rows that tie with a neighbour in request and utility (rare) have their ad ids
    read and sorted: sorting every row by its string id would cost far more.
    """
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((-utility[rows], owner[rows]))]
    u, o = utility[order], owner[order]
    tie = (o[1:] == o[:-1]) & ((u[1:] == u[:-1]) | (np.isnan(u[1:]) & np.isnan(u[:-1])))
    if not tie.any():
        return order
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = ~tie
    run = np.cumsum(starts)  # tied rows share a run number
    tied = np.flatnonzero(~(starts & np.append(starts[1:], True)))  # in a run of >= 2
    at = order[tied]
    if isinstance(ad_id, np.ndarray):
        ids = ad_id[at]
    else:
        ids = np.asarray(itemgetter(*at.tolist())(ad_id), dtype=str)  # >= 2 rows: a tuple
    order[tied] = at[np.lexsort((ids, run[tied]))]
    return order


def _fill_pod(
    rows: np.ndarray,
    req: int,
    capacity: Capacity,
    advertiser: list[str | None],
    category: list[str | None],
    duration_s: np.ndarray,
    room: PodRoom | None,
    competing: Mapping[str, str],
    rank: np.ndarray,
    reason: np.ndarray,
) -> None:
    max_ads = int(capacity.max_ads[req])
    max_total = float(capacity.max_total_s[req])
    used_adv: set[str] = set()
    used_cat: set[str] = set()
    used: dict[tuple[int, int], int] = {}  # (constraint, key) -> ads of the pod taken
    total = 0.0
    taken = 0
    for k, row in enumerate(rows):
        if taken == max_ads:
            reason[rows[k:]] = CODE[Reason.POD_FULL]
            return
        adv, cat = advertiser[row], category[row]
        cat = competing.get(cat, cat) if cat is not None else None
        if (adv is not None and adv in used_adv) or (cat is not None and cat in used_cat):
            reason[row] = CODE[Reason.COMPETITIVE_SEPARATION]
            continue
        if not np.isnan(max_total) and total + duration_s[row] > max_total:
            reason[row] = CODE[Reason.POD_FULL]
            continue
        counters = _counters(room, row)
        if any(used.get(c, 0) >= left for c, left in counters):
            reason[row] = CODE[Reason.FREQUENCY_CAPPED]
            continue
        for c, _ in counters:
            used[c] = used.get(c, 0) + 1
        taken += 1
        total += duration_s[row]
        rank[row] = taken
        reason[row] = CODE[Reason.SELECTED]
        used_adv.update([adv] if adv is not None else [])
        used_cat.update([cat] if cat is not None else [])


def _counters(room: PodRoom | None, row: int) -> list[tuple[tuple[int, int], float]]:
    """The row's (constraint, key) counters and the room each leaves."""
    if room is None:
        return []
    keys = room.keys[row]
    return [((int(c), int(keys[c])), float(room.room[row, c])) for c in np.flatnonzero(keys >= 0)]
