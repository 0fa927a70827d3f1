"""Exploration: a small, known randomisation of the scoring parameters, user-first.

Bottou et al. (JMLR 2013) randomised Bing's ad-placement parameters around their current values
with a known distribution and learnt from the logs what other values would have yielded. Here
the randomisation has a finite support, so that every decision's probability is exact: the
config draws ``variants`` parameter sets once (seeded) around the current experience-cost
weights, ``cost_to_money`` (lambda) and reserve, each parameter moved by a normal step of
``spread`` times its tuning range and clipped to that range (``tuning.ranges``: the bounds the
tuner searches too). A request of a slot with exploration share ``e`` is decided by the current
parameters with probability ``1 - e``, else by one of the variants, each with ``e / K``. Which
one is a deterministic function of the seed and the request id, so a retried request gets the
same answer and a replay the same decisions.

Exploration only moves how much experience cost and the reserve weigh: the eligibility rules
(format and length, brand suitability, caps, gaps, the user's feedback blocks, a store that
does not answer) apply to every variant as they are, so it never shows an ad a rule refuses.

What it gives each decision (``Propensities``):
* per candidate, the probability that this policy shows it (``propensity``): exact, the mean of
  the variants' choices weighted by their probabilities. For a single-ad slot that is the
  probability of the action; for a pod, the marginal probability that the ad is in the pod.
  Single slots support IPS, self-normalised IPS and doubly robust estimates exactly; pods
  support the same estimators under the additive reward assumption ``engine.ope`` makes (one ad
  does not change another's outcome), with these marginals.
* the probability of the answer as a whole (``selection``): the same ads in the same order, or
  no ad; what a slate estimator (or a no-ad answer) needs.
* the probability of no ad at all (``no_ad``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import COST_COMPONENTS, AdmatchConfig
from features.schema import SLOT_TOUCHPOINT

PARAMETERS = (*(f"weights.{c}" for c in COST_COMPONENTS), "cost_to_money", "reserve")
_DRAW_SCALE = float(2**64)


@dataclass(frozen=True)
class Variants:
    """The current parameters (row 0) and the exploration variants (rows 1..K).

    Attributes:
        weights: (K+1, components) experience-cost weights.
        cost_to_money: (K+1,) lambda.
        reserve: (K+1,) reserve.
        seed: the seed of the draws and of the per-request choice.
        shares: slot name -> exploration share (0: the current parameters always).
    """

    weights: np.ndarray
    cost_to_money: np.ndarray
    reserve: np.ndarray
    seed: int
    shares: dict[str, float]

    @classmethod
    def from_config(cls, config: AdmatchConfig) -> Variants:
        """The config's parameters and its exploration variants (none when exploration is off
        everywhere)."""
        e = config.exploration
        s = config.scoring
        current = np.array([*s.weights.vector(), s.cost_to_money, s.reserve])
        shares = {slot: e.share_of(slot, tp) for slot, tp in SLOT_TOUCHPOINT.items()}
        k = e.variants if any(shares.values()) else 0
        rng = np.random.default_rng(e.seed)
        ranges = config.tuning.ranges
        bounds = [ranges.get(p, (v, v)) for p, v in zip(PARAMETERS, current, strict=True)]
        low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
        steps = rng.normal(size=(k, len(current))) * e.spread * (high - low)
        drawn = np.clip(current + steps, np.minimum(low, current), np.maximum(high, current))
        table = np.vstack([current, drawn])
        n = len(COST_COMPONENTS)
        return cls(table[:, :n], table[:, n], table[:, n + 1], e.seed, shares)

    @property
    def count(self) -> int:
        """K, the number of variants besides the current parameters."""
        return len(self.reserve) - 1

    def share(self, slots: Sequence[str]) -> np.ndarray:
        """Per request, its slot's exploration share."""
        return np.array([self.shares.get(slot, 0.0) for slot in slots], dtype=np.float64)

    def choose(self, request_ids: Sequence[str], share: np.ndarray) -> np.ndarray:
        """Per request, the parameters that decide it: 0 (current) with probability
        ``1 - share``, else variant ``1..K`` uniformly; a function of the seed and the request
        id alone."""
        out = np.zeros(len(request_ids), dtype=np.int64)
        if self.count == 0:
            return out
        for i, (rid, e) in enumerate(zip(request_ids, share, strict=True)):  # per request
            if e > 0:
                u = _uniform(self.seed, rid)
                if u < e:
                    out[i] = 1 + min(int(u / e * self.count), self.count - 1)
        return out


def _uniform(seed: int, request_id: str) -> float:
    """A uniform number in [0, 1) from the seed and a request id (stable everywhere)."""
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _DRAW_SCALE


@dataclass(frozen=True)
class Propensities:
    """What the randomisation gives each decision (see the module doc).

    Attributes:
        propensity: per candidate row, P(shown).
        selection: per request, P(this answer: these ads in this order, or no ad).
        no_ad: per request, P(no ad).
        variant: per request, the parameters that decided it (0: current).
        share: per request, its exploration share.
        current_rank: per candidate row, its rank under the current parameters (what the
            request would have got without exploration; the cost of exploring).
    """

    propensity: np.ndarray
    selection: np.ndarray
    no_ad: np.ndarray
    variant: np.ndarray
    share: np.ndarray
    current_rank: np.ndarray


def propensities(
    ranks: np.ndarray, owner: np.ndarray, variant: np.ndarray, share: np.ndarray
) -> Propensities:
    """The probabilities of the served decisions.

    Args:
        ranks: (variants evaluated, rows) each variant's ranks (0: not selected); one row when
            nobody explores (the current parameters alone).
        owner: request per row (non-decreasing).
        variant: per request, the variant that serves it.
        share: per request, the exploration share.
    """
    k = ranks.shape[0] - 1
    per = np.zeros((ranks.shape[0], len(variant)))  # weight of each variant, per request
    per[0] = 1.0 - share
    if k:
        per[1:] = share / k
    weight = per[:, owner]  # (variants, rows)
    propensity = (weight * (ranks > 0)).sum(axis=0)
    served = ranks[variant[owner], np.arange(len(owner))]
    same = ranks == served  # per variant and row: the same rank as the served answer
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else owner
    agree = np.logical_and.reduceat(same, starts, axis=1) if len(owner) else same
    empty = ~np.logical_or.reduceat(ranks > 0, starts, axis=1) if len(owner) else same
    selection = (per * agree).sum(axis=0)
    no_ad = (per * empty).sum(axis=0)
    return Propensities(  # a sum of shares can pass 1 by an ulp: a log refuses that
        np.minimum(propensity, 1.0),
        np.minimum(selection, 1.0),
        np.minimum(no_ad, 1.0),
        variant,
        share,
        ranks[0],
    )
