"""The scoring core: features, model, experience cost, eligibility and ranking in one pass.

``Scorer.score_batch`` scores many requests with one polars pass for the features, one model
call per target and vectorised rules; ``Scorer.score`` is the batch form with one request.
The same inputs always give the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, chain

import numpy as np

from engine.config import AdmatchConfig
from engine.model.bundle import ModelBundle, Predictions
from engine.scoring import rules as R
from engine.scoring.explore import Propensities, Variants, propensities
from engine.scoring.selection import Capacity, select
from engine.scoring.types import CODE, Decision, PodRoom, Reason, ScoreRequest
from engine.timing import NULL_TIMER, StageTimer
from features.schema import SLOTS


class Scorer:
    """Decides what to show, given a loaded model bundle and a validated config."""

    def __init__(self, model: ModelBundle, config: AdmatchConfig) -> None:
        self.model = model
        self.config = config
        self.rules = R.CompiledRules.build(config)
        self.variants = Variants.from_config(config)
        self._competing = config.caps.competitor_of

    def score(self, request: ScoreRequest, timer: StageTimer = NULL_TIMER) -> Decision:
        """Decide one request (the batch form with one request)."""
        return self.score_batch([request], timer)[0]

    def score_batch(
        self, requests: Sequence[ScoreRequest], timer: StageTimer = NULL_TIMER
    ) -> list[Decision]:
        """Decide many requests in one vectorised pass (stages timed by ``timer``).

        The requests are valid: each was validated once, where it entered (the gRPC decoder,
        ``request_from_json``, a log's admission, ``App.decision_work``:
        ``ScoreRequest.validate``); the core does not check them again.
        """
        with timer.stage("features"):
            batch = self.model.core.batch(
                [r.context for r in requests],
                [r.candidates for r in requests],
                [r.exposures for r in requests],
                also=R.INPUTS,
            )
            matrix = batch.matrix()
            rows = R.Rows.from_inputs(batch.inputs, self.rules)
        with timer.stage("model"):
            predicted = self.model.predict(matrix, convert=rows.pricing == R.CPA)
        with timer.stage("rank"):
            return self._rank(requests, rows, batch.exposures, predicted)

    def _rank(
        self,
        requests: Sequence[ScoreRequest],
        rows: R.Rows,
        exposures: np.ndarray,
        predicted: Predictions,
    ) -> list[Decision]:
        p_engage, p_neg, p_convert = predicted
        p_negative = p_neg if p_neg is not None else np.zeros_like(p_engage)
        prior = self.config.scoring.conversion_prior
        value = R.expected_value(rows, p_engage, prior, p_convert)
        costs = R.cost_components(self.rules, rows, p_engage, p_negative, exposures)
        sizes = [len(r.candidates["ad_id"]) for r in requests]
        bounds = list(accumulate(sizes, initial=0))
        owner = np.repeat(np.arange(len(requests)), sizes)
        capped = self._capped(requests, exposures, bounds)
        store_down = np.array([not r.cap_store_ok for r in requests])[owner]
        apart = _flags(requests, bounds, "separated")
        by_user = _flags(requests, bounds, "user_blocked")
        static = self._blocked(rows, capped, store_down, apart, by_user)
        ad_id = list(chain.from_iterable(r.candidates["ad_id"] for r in requests))
        capacity = self._capacity(requests)
        separation = _separation(requests, sizes, capacity)
        room = _pod_room(requests, sizes, capacity)
        v = self.variants
        share = v.share([r.context.slot for r in requests])
        served = v.choose([r.context.request_id for r in requests], share)
        runs = []  # per parameter set evaluated: rank, reason, weighted costs, utility
        for k in range(v.count + 1 if share.any() else 1):  # a loop over parameter sets
            weighted = costs * v.weights[k]
            utility = value - v.cost_to_money[k] * weighted.sum(axis=1)
            below = np.where(utility <= v.reserve[k], CODE[Reason.BELOW_RESERVE], -1)
            blocked = np.where(static >= 0, static, below)
            rank, reason = select(
                owner,
                blocked < 0,
                utility,
                ad_id,
                *separation,
                rows.duration_s,
                capacity,
                room,
                self._competing,
            )
            runs.append((rank, np.where(blocked >= 0, blocked, reason), weighted, utility))
        odds = propensities(np.stack([r[0] for r in runs]), owner, served, share)
        at = (served[owner], np.arange(len(owner)))  # the served parameters' values per row
        rank, reason = (np.stack([r[i] for r in runs])[at] for i in (0, 1))
        weighted = np.stack([r[2] for r in runs])[at]
        utility = np.stack([r[3] for r in runs])[at]
        columns = (p_engage, p_negative, value, weighted, weighted.sum(axis=1), utility)
        return self._decisions(requests, bounds, owner, ad_id, rank, reason, odds, *columns)

    def _capped(
        self, requests: Sequence[ScoreRequest], exposures: np.ndarray, bounds: list[int]
    ) -> np.ndarray:
        """Per row, whether a cap refuses it: the store's decision where the request carries
        one, else the caps its exposure counts express."""
        if all(r.capped is not None for r in requests):
            capped = np.empty(len(exposures), dtype=bool)
        else:
            capped = R.frequency_capped(self.rules, exposures)
        for i, r in enumerate(requests):  # a loop over requests
            if r.capped is not None:
                capped[bounds[i] : bounds[i + 1]] = r.capped
        return capped

    def _blocked(
        self,
        rows: R.Rows,
        capped: np.ndarray,
        store_down: np.ndarray,
        apart: np.ndarray | None,
        by_user: np.ndarray | None,
    ) -> np.ndarray:
        """Reason code of the first failed eligibility rule per row that no parameter moves
        (exploration never shows what these refuse; the protections come first), -1 when it
        passes them all; the reserve
        is checked per parameter set. A row capped because the cap store did not answer
        (``store_down``: the fail mode's) is not FREQUENCY_CAPPED but CAP_STORE_UNAVAILABLE; one
        a block of the user's caps (``by_user``) is USER_BLOCKED, one stream separation caps
        (``apart``) COMPETITIVE_SEPARATION."""
        checks = [
            *((refused, Reason(name)) for refused, name in R.protections(self.rules, rows)),
            *((refused, Reason(name)) for refused, name in R.blocked(self.rules, rows)),
            (R.assistant_busy(self.rules, rows), Reason.ASSISTANT_BUSY),
            (R.format_not_allowed(self.rules, rows), Reason.FORMAT_NOT_ALLOWED),
            (R.brand_unsuitable(rows), Reason.BRAND_UNSUITABLE),
            (capped & store_down, Reason.CAP_STORE_UNAVAILABLE),
            *([] if by_user is None else [(capped & by_user, Reason.USER_BLOCKED)]),
            *([] if apart is None else [(capped & apart, Reason.COMPETITIVE_SEPARATION)]),
            (capped, Reason.FREQUENCY_CAPPED),
        ]
        blocked = np.full(len(capped), -1)
        for mask, r in reversed(checks):  # a loop over the rules: the first failed one wins
            blocked[mask] = CODE[r]
        return blocked

    def _capacity(self, requests: Sequence[ScoreRequest]) -> Capacity:
        slots = self.config.slots
        max_ads, max_total = [], []
        for r in requests:
            rule = slots[r.context.slot] if r.context.slot in SLOTS else None
            pod_ads = r.pod.max_ads if r.pod else None
            pod_total = r.pod.max_total_duration_s if r.pod else None
            max_ads.append(pod_ads or (rule.max_ads if rule else 1))
            total = pod_total or (rule.max_total_duration_s if rule else None)
            max_total.append(np.nan if total is None else total)
        return Capacity(np.asarray(max_ads), np.asarray(max_total, dtype=np.float64))

    def _decisions(
        self,
        requests: Sequence[ScoreRequest],
        bounds: list[int],
        owner: np.ndarray,
        ad_id: list[str],
        rank: np.ndarray,
        reason: np.ndarray,
        odds: Propensities,
        *columns: np.ndarray,
    ) -> list[Decision]:
        p_engage, p_negative, value, weighted, cost, utility = columns
        codes = reason.astype(np.uint8)
        picked = np.flatnonzero(rank > 0)
        picked = picked[np.lexsort((rank[picked], owner[picked]))]  # by request, then rank
        cuts = np.searchsorted(owner[picked], np.arange(len(requests) + 1)).tolist()
        chosen = picked.tolist()
        out = []
        for i, req in enumerate(requests):  # a loop over requests
            lo, hi = bounds[i], bounds[i + 1]
            out.append(
                Decision(
                    request_id=req.context.request_id,
                    selected=[ad_id[j] for j in chosen[cuts[i] : cuts[i + 1]]],
                    ad_id=ad_id[lo:hi],
                    reason_code=codes[lo:hi],
                    rank=rank[lo:hi],
                    p_engage=p_engage[lo:hi],
                    p_negative=p_negative[lo:hi],
                    expected_value=value[lo:hi],
                    costs=weighted[lo:hi],
                    cost=cost[lo:hi],
                    utility=utility[lo:hi],
                    model_version=self.model.version,
                    config_version=self.config.version,
                    cap_store_ok=req.cap_store_ok,
                    propensity=odds.propensity[lo:hi],
                    selection_propensity=float(odds.selection[i]),
                    no_ad_propensity=float(odds.no_ad[i]),
                    variant=int(odds.variant[i]),
                    exploration_share=float(odds.share[i]),
                    current_rank=odds.current_rank[lo:hi],
                )
            )
        return out


def _flags(requests: Sequence[ScoreRequest], bounds: list[int], name: str) -> np.ndarray | None:
    """Per row, a request's per-candidate flag ``name`` (``separated``, ``user_blocked``);
    ``None`` when no request has it."""
    parts = [getattr(r, name) for r in requests]
    if all(p is None for p in parts):
        return None
    out = np.zeros(bounds[-1], dtype=bool)
    for i, part in enumerate(parts):  # a loop over requests
        if part is not None:
            out[bounds[i] : bounds[i + 1]] = part
    return out


def _separation(
    requests: Sequence[ScoreRequest], sizes: list[int], capacity: Capacity
) -> tuple[list[str | None], list[str | None]]:
    """Per row, the advertiser and category that pods keep apart (all None when no request
    is a pod: nothing to keep apart, nothing to build)."""
    if not capacity.pods().any():
        nothing: list[str | None] = [None] * sum(sizes)
        return nothing, nothing
    return _column(requests, "advertiser_id", sizes), _column(requests, "category", sizes)


def _pod_room(
    requests: Sequence[ScoreRequest], sizes: list[int], capacity: Capacity
) -> PodRoom | None:
    """Per row, what its caps leave for the ads of its pod (the cap gate's), padded to the
    batch's widest; ``None`` when no pod carries any."""
    parts = [r.pod_room if pod else None for r, pod in zip(requests, capacity.pods(), strict=True)]
    width = max((p.keys.shape[1] for p in parts if p is not None), default=0)
    if not width:
        return None
    keys = np.full((sum(sizes), width), -1, dtype=np.int64)
    room = np.ones((sum(sizes), width))
    start = 0
    for part, n in zip(parts, sizes, strict=True):
        if part is not None:
            c = part.keys.shape[1]
            keys[start : start + n, :c] = part.keys
            room[start : start + n, :c] = part.room
        start += n
    return PodRoom(keys, room)


def _column(requests: Sequence[ScoreRequest], name: str, sizes: list[int]) -> list[str | None]:
    parts = []
    for r, n in zip(requests, sizes, strict=True):
        values = r.candidates.get(name)
        parts.append([None] * n if values is None else values)
    return list(chain.from_iterable(parts))
