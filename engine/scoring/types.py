"""Requests to and decisions of the scoring core: plain Python and numpy, no transport types."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from numbers import Integral, Real
from typing import Any

import numpy as np

from engine.caps.plan import check_time
from engine.caps.rules import CampaignCaps
from engine.config import COST_COMPONENTS
from engine.errors import InvalidArgument
from features.online import CandidateColumns, RequestContext
from features.schema import COLUMNS, SLOT_TOUCHPOINT, TOUCHPOINTS, Column


class Reason(StrEnum):
    """Why a candidate was or was not shown. Checked in this order; the first that applies wins."""

    SELECTED = "SELECTED"
    FORMAT_NOT_ALLOWED = "FORMAT_NOT_ALLOWED"  # format or length not accepted by the slot
    BRAND_UNSUITABLE = "BRAND_UNSUITABLE"  # tier above the context rating, or mature in family
    FREQUENCY_CAPPED = "FREQUENCY_CAPPED"  # a cap rule's count reached its limit
    BELOW_RESERVE = "BELOW_RESERVE"  # utility not above the reserve
    COMPETITIVE_SEPARATION = "COMPETITIVE_SEPARATION"  # pod already has its advertiser/category
    POD_FULL = "POD_FULL"  # pod's ad count or total duration would be exceeded
    OUTRANKED = "OUTRANKED"  # eligible, but the slot went to higher-utility ads


@dataclass(frozen=True)
class PodLimits:
    """Per-request override of the slot's capacity (an ad server may know the break length)."""

    max_ads: int
    max_total_duration_s: float | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One ad opportunity and its candidates.

    Attributes:
        context: the request-level fields.
        candidates: candidate columns (``ad_id``, ``format``, ``bid``, ``pricing`` required).
        exposures: (n candidates x 30) exposure counts in ``EXPOSURE_SCHEMA`` order, or
            ``None`` for no history.
        pod: capacity override; ``None`` uses the slot's config.
        capped: per candidate, whether the cap store's rules refuse it (see
            ``engine.caps.gate``); ``None``: judge only the caps the exposures express.
        campaign_caps: campaigns' own caps (by campaign id), added to the global rules by the
            cap gate.
    """

    context: RequestContext
    candidates: CandidateColumns
    exposures: np.ndarray | None = None
    pod: PodLimits | None = None
    capped: np.ndarray | None = None
    campaign_caps: CampaignCaps | None = None

    def validate(self, where: str = "request") -> None:
        """Reject what the feature core would not catch, naming the field.

        Raises:
            InvalidArgument: a time outside ``plan.check_time``'s range, a local hour outside
                0-23, unknown touchpoint, slot of another touchpoint, no candidates,
                duplicated ad ids, a bid or duration that is not a finite number in its
                column's range (``features.schema``: bid >= 0, duration 0-3600 s; a duration
                may be null).
        """
        _check_context(self.context, where)
        ads = self.candidates.get("ad_id")
        if ads is None or len(ads) == 0:
            raise InvalidArgument(f"{where}.candidates", "empty: at least one candidate needed")
        if set(map(type, ads)) != {str} or "" in ads:  # C-level passes; the search is rare
            first = next((i for i, a in enumerate(ads) if not isinstance(a, str) or not a), -1)
            if first >= 0:
                raise InvalidArgument(
                    f"{where}.candidates[{first}].ad_id", f"required, got {ads[first]!r}"
                )
        if len(set(ads)) != len(ads):
            dup = next(a for a in ads if list(ads).count(a) > 1)
            raise InvalidArgument(f"{where}.candidates.ad_id", f"duplicated ad id {dup!r}")
        for column in _RANGED:
            _check_numbers(self.candidates.get(column.name), column, f"{where}.candidates")
        if self.pod is not None:
            _check_pod(self.pod, f"{where}.pod")


# candidate columns with a declared range (bid, duration_s): the log's ranges hold online too
_RANGED = tuple(
    c for c in COLUMNS if c.group == "candidate" and (c.low is not None or c.high is not None)
)


def _check_numbers(values: Any, column: Column, where: str) -> None:
    """A candidate column's values: finite numbers in the column's range; nulls only where the
    column allows them (an absent column is the feature core's to refuse)."""
    if values is None:
        return
    try:
        numbers = np.asarray(values, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}.{column.name}", f"not numbers: {exc}") from exc
    low = -math.inf if column.low is None else column.low
    high = math.inf if column.high is None else column.high
    bad = ~(np.isfinite(numbers) & (numbers >= low) & (numbers <= high))
    for i in np.flatnonzero(bad):  # the common case: none
        value = values[i]
        if value is None and column.nullable:
            continue
        bound = f">= {column.low}" if column.high is None else f"in {column.range_text}"
        raise InvalidArgument(f"{where}[{i}].{column.name}", f"must be {bound}, got {value!r}")


def _check_context(ctx: RequestContext, where: str) -> None:
    """The request-level checks of ``ScoreRequest.validate``."""
    if isinstance(ctx.ts, datetime) and ctx.ts.tzinfo is not None:  # else features refuse
        check_time(ctx.ts, f"{where}.ts")
    hour = ctx.local_hour
    if hour is not None and (not isinstance(hour, Integral) or not 0 <= hour <= 23):
        raise InvalidArgument(f"{where}.local_hour", f"must be an hour 0-23, got {hour!r}")
    if not isinstance(ctx.touchpoint, str) or ctx.touchpoint not in TOUCHPOINTS:
        raise InvalidArgument(f"{where}.touchpoint", f"unknown touchpoint {ctx.touchpoint!r}")
    if not isinstance(ctx.slot, str) or SLOT_TOUCHPOINT.get(ctx.slot) != ctx.touchpoint:
        raise InvalidArgument(f"{where}.slot", f"{ctx.slot!r} is not a slot of {ctx.touchpoint}")


def _check_pod(pod: PodLimits, where: str) -> None:
    """A pod's limits: at least one ad, a total length >= 0 (``None``: none)."""
    ads, total = pod.max_ads, pod.max_total_duration_s
    if isinstance(ads, bool) or not isinstance(ads, Integral) or ads < 1:
        raise InvalidArgument(f"{where}.max_ads", f"must be an integer >= 1, got {ads!r}")
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, Real) or not 0 <= total < math.inf
    ):
        raise InvalidArgument(
            f"{where}.max_total_duration_s", f"must be a number >= 0, got {total!r}"
        )


@dataclass(frozen=True)
class Decision:
    """The decision on every candidate of one request, as columns aligned with its candidates.

    Attributes:
        request_id: the request's id.
        selected: ad ids to show, in order (empty: no ad).
        ad_id: candidate ad ids, in request order.
        reason: one ``Reason`` per candidate.
        rank: 1-based position among the selected, 0 when not selected.
        p_engage, p_negative: model probabilities.
        expected_value: money per impression by pricing model.
        costs: (n x len(COST_COMPONENTS)) weighted cost components, unitless.
        cost: sum of ``costs``; ``utility = expected_value - cost_to_money x cost``.
        model_version, config_version: what produced the decision.
    """

    request_id: str
    selected: list[str]
    ad_id: list[str]
    reason: list[Reason]
    rank: np.ndarray
    p_engage: np.ndarray
    p_negative: np.ndarray
    expected_value: np.ndarray
    costs: np.ndarray
    cost: np.ndarray
    utility: np.ndarray
    model_version: str
    config_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def no_ad(self) -> bool:
        """True when nothing is shown."""
        return not self.selected

    def rows(self) -> list[dict[str, Any]]:
        """One dict per candidate (for printing, JSON and golden files)."""
        out = []
        for i, ad in enumerate(self.ad_id):
            row: dict[str, Any] = {
                "ad_id": ad,
                "reason": str(self.reason[i]),
                "rank": int(self.rank[i]),
                "p_engage": float(self.p_engage[i]),
                "p_negative": float(self.p_negative[i]),
                "expected_value": float(self.expected_value[i]),
                "cost": {c: float(self.costs[i, j]) for j, c in enumerate(COST_COMPONENTS)},
                "cost_total": float(self.cost[i]),
                "utility": float(self.utility[i]),
            }
            out.append(row)
        return out
