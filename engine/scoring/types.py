"""Requests to and decisions of the scoring core: plain Python and numpy, no transport types."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from numbers import Integral, Real
from typing import Any

import numpy as np

from engine.caps.plan import check_time
from engine.caps.rules import CampaignCaps
from engine.config import COST_COMPONENTS, MAX_POD_ADS
from engine.errors import InvalidArgument, shown
from features.online import CandidateColumns, RequestContext
from features.schema import (
    COLUMN_BY_NAME,
    COLUMNS,
    CREATIVE_ATTRIBUTES,
    SLOT_TOUCHPOINT,
    TOUCHPOINTS,
    Column,
)


class Reason(StrEnum):
    """Why a candidate was or was not shown. The first that applies wins, in the order of
    ``Scorer._blocked`` (the protections first), then reserve, separation, pod, rank."""

    SELECTED = "SELECTED"
    FORMAT_NOT_ALLOWED = "FORMAT_NOT_ALLOWED"  # format or length not accepted by the slot
    BRAND_UNSUITABLE = "BRAND_UNSUITABLE"  # tier above the context rating, or mature in family
    FREQUENCY_CAPPED = "FREQUENCY_CAPPED"  # a cap rule's count reached its limit
    BELOW_RESERVE = "BELOW_RESERVE"  # utility not above the reserve
    COMPETITIVE_SEPARATION = "COMPETITIVE_SEPARATION"  # pod already has its advertiser/category
    POD_FULL = "POD_FULL"  # pod's ad count or total duration would be exceeded
    OUTRANKED = "OUTRANKED"  # eligible, but the slot went to higher-utility ads
    CAP_STORE_UNAVAILABLE = "CAP_STORE_UNAVAILABLE"  # caps unknown (store down), failing closed
    # protections (docs/scoring.md), checked before everything else; new codes go last, as
    # a reason's code is its place here (the logs keep codes)
    AGE_RESTRICTED = "AGE_RESTRICTED"  # a restricted category, and the user is under 18
    CHILD_PRESENT = "CHILD_PRESENT"  # a restricted category, and a child may be present
    AUDIENCE_UNKNOWN = "AUDIENCE_UNKNOWN"  # a restricted category on a shared screen
    ASSISTANT_BUSY = "ASSISTANT_BUSY"  # a voice slot in a state that takes no ads
    BLOCKED_CATEGORY = "BLOCKED_CATEGORY"  # the request or config blocks its category
    BLOCKED_ADVERTISER = "BLOCKED_ADVERTISER"  # the request blocks its advertiser
    BLOCKED_ATTRIBUTE = "BLOCKED_ATTRIBUTE"  # the request blocks an attribute of its creative
    CONTENT_EXCLUDED = "CONTENT_EXCLUDED"  # its campaign must not appear next to this content
    USER_BLOCKED = "USER_BLOCKED"  # the user's feedback or a conversion blocks it (caps.blocks)


REASONS = list(Reason)  # a reason's code (decision arrays, the logs) is its place here
CODE = {r: i for i, r in enumerate(REASONS)}
_BY_CODE = np.array(REASONS, dtype=object)
REASON_NAMES = np.array([str(r) for r in REASONS], dtype=object)  # by code


@dataclass(frozen=True)
class PodLimits:
    """Per-request override of the slot's capacity (an ad server may know the break length)."""

    max_ads: int
    max_total_duration_s: float | None = None


@dataclass(frozen=True)
class PodRoom:
    """What each candidate's caps leave for the other ads of its pod (docs/caps.md): the ads
    of one pod count toward each other's caps, as reserving them one by one would.

    Attributes:
        keys: (n candidates x C constraints: cap rules, then minimum gaps) the candidate's
            counter under each constraint (-1: it does not apply); ads of one pod with the
            same key under a constraint share its room.
        room: (n x C) how many more exposures of that counter the constraint admits now (a
            gap admits one: a second one in the same pod would follow it at once).
    """

    keys: np.ndarray
    room: np.ndarray


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
        cap_store_ok: False when the cap store did not answer for this request: ``capped``
            is then the fail mode's (fail closed: every candidate a rule applies to, refused
            with reason CAP_STORE_UNAVAILABLE), and no reservation is tried.
        pod_room: for a pod, what the caps leave for its ads together (the cap gate's);
            ``None``: the pod's ads are judged one by one.
        separated: per candidate, whether stream separation (``caps.separation``) is what
            caps it (reason COMPETITIVE_SEPARATION); ``None``: none does.
        user_blocked: per candidate, whether a block (the user's feedback, a conversion:
            ``caps.feedback``, ``caps.blocks``) caps it (reason USER_BLOCKED); ``None``: none.
    """

    context: RequestContext
    candidates: CandidateColumns
    exposures: np.ndarray | None = None
    pod: PodLimits | None = None
    capped: np.ndarray | None = None
    campaign_caps: CampaignCaps | None = None
    cap_store_ok: bool = True
    pod_room: PodRoom | None = None
    separated: np.ndarray | None = None
    user_blocked: np.ndarray | None = None

    def validate(self, where: str = "request") -> None:
        """Reject what the feature core would not catch, naming the field.

        Raises:
            InvalidArgument: a time outside ``plan.check_time``'s range, a local hour outside
                0-23, unknown touchpoint, slot of another touchpoint, no candidates,
                duplicated ad ids, a bid or duration that is not a finite number in its
                column's range (``features.schema``: bid >= 0, duration 0-3600 s; a duration
                may be null), a pod outside ``check_pod``'s bounds.
        """
        _check_context(self.context, where)
        ads = self.candidates.get("ad_id")
        if ads is None or len(ads) == 0:
            raise InvalidArgument(f"{where}.candidates", "empty: at least one candidate needed")

        def at(name: str, i: int) -> str:
            return f"{where}.candidates[{i}].{name}"

        check_ad_ids(ads, at)
        check_ranged(self.candidates, at)
        if self.pod is not None:
            check_pod(self.pod, f"{where}.pod")


FieldAt = Callable[[str, int], str]  # the path of candidate i's attribute, as the caller names it

# candidate columns with a declared range (bid, duration_s): the log's ranges hold online too
RANGED = tuple(
    c for c in COLUMNS if c.group == "candidate" and (c.low is not None or c.high is not None)
)
MAX_POD_SECONDS = COLUMN_BY_NAME["duration_s"].high or 3600.0


def attribute_mask(numbers: Any, field: str) -> int:
    """OpenRTB creative attribute numbers (1-17) as the core's bitmask (bit k-1 for k).

    Raises:
        InvalidArgument: not a list of attribute numbers, naming ``field[i]``.
    """
    if not isinstance(numbers, list | tuple) and not hasattr(numbers, "__len__"):
        raise InvalidArgument(field, f"must be a list of attribute numbers, got {shown(numbers)}")
    mask = 0
    for i, k in enumerate(numbers):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(CREATIVE_ATTRIBUTES):
            limit = len(CREATIVE_ATTRIBUTES)
            raise InvalidArgument(
                f"{field}[{i}]", f"must be an OpenRTB creative attribute 1-{limit}, got {shown(k)}"
            )
        mask |= 1 << (k - 1)
    return mask


def attribute_numbers(mask: int | None) -> list[int]:
    """The attribute numbers of a bitmask (:func:`attribute_mask` undone)."""
    return [k + 1 for k in range(len(CREATIVE_ATTRIBUTES)) if (mask or 0) >> k & 1]


def check_ad_ids(ads: Any, at: FieldAt) -> None:
    """Every ad id a non-empty string, and none twice (C-level passes; the search for the
    culprit only when there is one).

    Raises:
        InvalidArgument: naming the ad id's path (``at("ad_id", i)``), the value and the rule.
    """
    if set(map(type, ads)) != {str} or "" in ads:
        first = next((i for i, a in enumerate(ads) if not isinstance(a, str) or not a), -1)
        if first >= 0:
            raise InvalidArgument(at("ad_id", first), f"required, got {shown(ads[first])}")
    if len(set(ads)) != len(ads):
        seen: dict[str, int] = {}
        for i, ad in enumerate(ads):  # the rare case: find the second of a pair
            if ad in seen:
                earlier = at("ad_id", seen[ad])
                raise InvalidArgument(
                    at("ad_id", i), f"{shown(ad)} is given twice (first at {earlier})"
                )
            seen[ad] = i


def check_ranged(candidates: CandidateColumns, at: FieldAt) -> None:
    """The candidate columns with a range (:data:`RANGED`) hold to it."""
    for column in RANGED:
        _check_numbers(candidates.get(column.name), column, at)


def _check_numbers(values: Any, column: Column, at: FieldAt) -> None:
    """A candidate column's values: finite numbers in the column's range; nulls only where the
    column allows them (an absent column is the feature core's to refuse)."""
    if values is None:
        return
    low = -math.inf if column.low is None else column.low
    high = math.inf if column.high is None else column.high
    if (
        set(map(type, values)) == {float}  # the decoder's and the common case: C-level passes
        and all(map(math.isfinite, values))
        and low <= min(values)
        and max(values) <= high
    ):
        return  # all good, ~1-4 us where numpy's checks take ~10 (the rest: found below)
    try:
        numbers = np.asarray(values, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(at(column.name, 0), f"not numbers: {exc}") from exc
    bad = ~(np.isfinite(numbers) & (numbers >= low) & (numbers <= high))
    for i in np.flatnonzero(bad):  # the common case: none
        value = values[i]
        if value is None and column.nullable:
            continue
        bound = f">= {column.low}" if column.high is None else f"in {column.range_text}"
        raise InvalidArgument(at(column.name, int(i)), f"must be {bound}, got {shown(value)}")


def _check_context(ctx: RequestContext, where: str) -> None:
    """The request-level checks of ``ScoreRequest.validate``."""
    if isinstance(ctx.ts, datetime) and ctx.ts.tzinfo is not None:  # else features refuse
        check_time(ctx.ts, f"{where}.ts")
    hour = ctx.local_hour
    if hour is not None and (not isinstance(hour, Integral) or not 0 <= hour <= 23):
        raise InvalidArgument(f"{where}.local_hour", f"must be an hour 0-23, got {shown(hour)}")
    if not isinstance(ctx.touchpoint, str) or ctx.touchpoint not in TOUCHPOINTS:
        raise InvalidArgument(f"{where}.touchpoint", f"unknown touchpoint {shown(ctx.touchpoint)}")
    if not isinstance(ctx.slot, str) or SLOT_TOUCHPOINT.get(ctx.slot) != ctx.touchpoint:
        raise InvalidArgument(
            f"{where}.slot", f"{shown(ctx.slot)} is not a slot of {ctx.touchpoint}"
        )


def check_pod(pod: PodLimits, where: str) -> None:
    """A pod's limits: 1 to ``MAX_POD_ADS`` ads (as a configured slot), a total length of 0 to
    ``MAX_POD_SECONDS`` (``None``: none).

    Raises:
        InvalidArgument: naming ``where.max_ads`` or ``where.max_total_duration_s``.
    """
    ads, total = pod.max_ads, pod.max_total_duration_s
    if isinstance(ads, bool) or not isinstance(ads, Integral) or not 1 <= ads <= MAX_POD_ADS:
        raise InvalidArgument(
            f"{where}.max_ads", f"must be an integer 1 to {MAX_POD_ADS}, got {shown(ads)}"
        )
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, Real) or not 0 <= total <= MAX_POD_SECONDS
    ):
        raise InvalidArgument(
            f"{where}.max_total_duration_s",
            f"must be a number 0 to {MAX_POD_SECONDS:g}, got {shown(total)}",
        )


@dataclass(frozen=True)
class Decision:
    """The decision on every candidate of one request, as columns aligned with its candidates.

    Attributes:
        request_id: the request's id.
        selected: ad ids to show, in order (empty: no ad).
        ad_id: candidate ad ids, in request order.
        reason_code: per candidate, its ``Reason``'s code (``CODE``); ``reason``: the
            ``Reason`` objects.
        rank: 1-based position among the selected, 0 when not selected.
        p_engage, p_negative: model probabilities.
        expected_value: money per impression by pricing model.
        costs: (n x len(COST_COMPONENTS)) weighted cost components, unitless.
        cost: sum of ``costs``; ``utility = expected_value - cost_to_money x cost``.
        model_version, config_version: what produced the decision.
        cap_store_ok: False when the cap store did not answer for the request (its caps
            are the fail mode's).
        propensity: per candidate, the probability that the deciding policy (with its
            exploration, engine/scoring/explore.py) shows it; 1 or 0 without exploration.
        selection_propensity: the probability of this answer as a whole (these ads in this
            order, or no ad).
        no_ad_propensity: the probability of no ad.
        variant: the parameters that decided it: 0 the current ones, k an exploration variant.
        exploration_share: the request's slot's exploration share.
        current_rank: per candidate, its rank under the current parameters (equal to
            ``rank`` unless an exploration variant decided).
    """

    request_id: str
    selected: list[str]
    ad_id: list[str]
    reason_code: np.ndarray
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
    cap_store_ok: bool = True
    propensity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    selection_propensity: float = 1.0
    no_ad_propensity: float = 0.0
    variant: int = 0
    exploration_share: float = 0.0
    current_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def reason(self) -> list[Reason]:
        """One ``Reason`` per candidate."""
        reasons: list[Reason] = _BY_CODE[self.reason_code].tolist()
        return reasons

    @property
    def no_ad(self) -> bool:
        """True when nothing is shown."""
        return not self.selected

    def rows(self) -> list[dict[str, Any]]:
        """One dict per candidate (for printing, JSON and golden files)."""
        out = []
        names = REASON_NAMES[self.reason_code]
        for i, ad in enumerate(self.ad_id):
            row: dict[str, Any] = {
                "ad_id": ad,
                "reason": names[i],
                "rank": int(self.rank[i]),
                "p_engage": float(self.p_engage[i]),
                "p_negative": float(self.p_negative[i]),
                "expected_value": float(self.expected_value[i]),
                "cost": {c: float(self.costs[i, j]) for j, c in enumerate(COST_COMPONENTS)},
                "cost_total": float(self.cost[i]),
                "utility": float(self.utility[i]),
                "propensity": float(self.propensity[i]) if len(self.propensity) else None,
            }
            out.append(row)
        return out


IMPRESSION_SEPARATOR = ":"


def impression_id(request_id: str, ad_id: str) -> str:
    """The impression id of ad ``ad_id`` selected for request ``request_id``: what a
    reservation records, what the response gives the ad server to report, what the decision
    log carries (built there column-wise with the same separator)."""
    return f"{request_id}{IMPRESSION_SEPARATOR}{ad_id}"
