"""Logging policies: which candidates were shown, and with what probability.

Both policies leave a request empty with probability ``no_ad_share`` and otherwise fill its
capacity ``m`` (``pod_size`` on ``ott_preroll``, else 1; at most the number of candidates ``K``):

* ``uniform``: ``m`` of the ``K`` candidates uniformly at random; propensity ``(1-p0) m / K``.
* ``greedy`` (epsilon-greedy): with probability ``1-epsilon`` the top ``m`` by a score, else
  ``m`` uniformly; propensity ``(1-p0) ((1-epsilon) [i in top m] + epsilon m / K)``.

The propensity of showing no ad at all is ``p0``, so for single-ad slots
``P(no ad) = 1 - sum of the request's propensities``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.synth.params import WorldParams


@dataclass(frozen=True)
class Shown:
    """The policy's choice per candidate row."""

    shown: np.ndarray
    propensity: np.ndarray


def _rank_within(group: np.ndarray, key: np.ndarray) -> np.ndarray:
    """0-based rank of each row by ascending ``key`` within its (contiguous) group."""
    order = np.lexsort((key, group))
    starts = np.searchsorted(group[order], group[order], side="left")
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - starts
    return rank


def log_policy(
    params: WorldParams,
    request_index: np.ndarray,
    is_pod: np.ndarray,
    score: np.ndarray,
    rng: np.random.Generator,
) -> Shown:
    """Apply the configured logging policy.

    Args:
        params: world parameters (policy, epsilon, pod size, no-ad share).
        request_index: request number per candidate row, non-decreasing.
        is_pod: per row, whether its request's slot takes a pod.
        score: per row, the greedy policy's score (higher is better); ignored by ``uniform``.
        rng: the generator's random stream.
    """
    n_req = int(request_index[-1]) + 1 if len(request_index) else 0
    k = np.bincount(request_index, minlength=n_req)[request_index]
    m = np.minimum(np.where(is_pod, params.pod_size, 1), k)
    filled = (rng.random(n_req) >= params.no_ad_share)[request_index]
    p_fill = 1.0 - params.no_ad_share
    uniform_rank = _rank_within(request_index, rng.random(len(request_index)))
    if params.policy == "uniform":
        shown = filled & (uniform_rank < m)
        propensity = p_fill * m / k
    else:
        explore = (rng.random(n_req) < params.epsilon)[request_index]
        top = _rank_within(request_index, -score) < m
        shown = filled & np.where(explore, uniform_rank < m, top)
        eps = params.epsilon
        propensity = p_fill * ((1 - eps) * top + eps * m / k)
    return Shown(shown=shown, propensity=propensity.astype(np.float64))
