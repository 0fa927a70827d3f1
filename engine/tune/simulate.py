"""What the engine would have shown with given weights: the log replayed in causal blocks.

Requests are taken in time order in blocks that never hold one user, household or device twice
(``engine.replay.engines.causal_spans``), so every request sees the exposures of all earlier
ones exactly, as in production. Per block, vectorised over its rows: the policy's own exposure
counts give the caps, gaps, feedback blocks and the fatigue cost; the utility is
``expected value - cost_to_money x weights . costs``; the engine's own selection
(``engine.scoring.selection.select``) fills each slot; the selected ads are recorded into the
counters (and, for rows the log showed with blocking negative feedback, that feedback). The
loop runs over blocks (thousands per million rows), never over rows or requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.caps.rules import CapRule, Family, parse_duration
from engine.config import COST_COMPONENTS, AdmatchConfig
from engine.scoring.selection import Capacity, select
from engine.scoring.types import PodRoom
from engine.tune.counters import FamilyCounter
from engine.tune.data import FATIGUE, FATIGUE_FAMILIES, TuningData, Warm
from features.exposure import WINDOWS_S, window_floor

DAY_US = 86_400_000_000
_WINDOW_NAMES = {seconds: name for name, seconds in WINDOWS_S.items()}
FATIGUE_DEPTH = 32  # fatigue grows with log1p(count): counts beyond this change it little


@dataclass(frozen=True)
class Policy:
    """The tunable part of the scoring config."""

    weights: np.ndarray  # per cost component, in COST_COMPONENTS order
    cost_to_money: float
    reserve: float

    @classmethod
    def from_config(cls, config: AdmatchConfig) -> Policy:
        """The policy a config runs."""
        s = config.scoring
        return cls(np.array(s.weights.vector()), s.cost_to_money, s.reserve)

    def to_params(self) -> dict[str, float]:
        """Flat parameters (``weights.<component>``, ``cost_to_money``, ``reserve``)."""
        out = {f"weights.{c}": float(w) for c, w in zip(COST_COMPONENTS, self.weights, strict=True)}
        return {**out, "cost_to_money": self.cost_to_money, "reserve": self.reserve}

    @classmethod
    def from_params(cls, params: dict[str, float], base: Policy) -> Policy:
        """``base`` with the parameters given (the others kept)."""
        weights = np.array(
            [
                params.get(f"weights.{c}", w)
                for c, w in zip(COST_COMPONENTS, base.weights, strict=True)
            ]
        )
        return cls(
            weights,
            float(params.get("cost_to_money", base.cost_to_money)),
            float(params.get("reserve", base.reserve)),
        )


class Simulator:
    """Replays a prepared log under any policy (reusable across trials)."""

    def __init__(self, data: TuningData, config: AdmatchConfig) -> None:
        self.data = data
        self.config = config
        caps = config.caps
        self.retention_us = parse_duration(config.store.retention) * 1_000_000
        depth: dict[Family, int] = {f: FATIGUE_DEPTH for f, _, _ in FATIGUE_FAMILIES}
        for rule in caps.rules:
            depth[rule.family()] = max(depth.get(rule.family(), 1), rule.limit)
        for gap in caps.min_gaps:
            depth[gap.family()] = max(depth.get(gap.family(), 1), 2)
        self.exposures = {f: self._counter(f, d) for f, d in depth.items()}
        fb = caps.feedback
        scopes = ["user", "household"] if fb.household else ["user"]
        feedback = [Family.model_validate({"scope": s, "target": fb.target}) for s in scopes]
        self.feedback = {f: self._counter(f, 2) for f in feedback}
        self.block_us = fb.duration_s * 1_000_000
        self.blocking = data.shown & np.isin(data.feedback_kind, list(fb.kinds))
        if data.warm is not None:
            self._warm(data.warm)

    def _counter(self, family: Family, depth: int) -> FamilyCounter:
        warm = self.data.warm
        keys = int(warm.keys[family].max()) + 1 if warm and warm.impressions else 0
        return FamilyCounter(self.data.family_keys[family], depth, keys)

    def _warm(self, warm: Warm) -> None:
        """Start every trial from the exposures (and blocking feedback) before the log."""
        blocking = np.isin(warm.feedback_kind, list(self.config.caps.feedback.kinds))
        for family, counter in self.exposures.items():
            counter.add_keys(warm.keys[family], warm.t_us)
            counter.start_here()
        for family, counter in self.feedback.items():
            counter.add_keys(warm.keys[family][blocking], warm.t_us[blocking])
            counter.start_here()

    def run(self, policy: Policy) -> np.ndarray:
        """Per row, the rank the policy gives it (1-based among the selected, 0 if not)."""
        d = self.data
        for c in [*self.exposures.values(), *self.feedback.values()]:
            c.reset()
        static = d.components @ policy.weights
        rank = np.zeros(d.rows, dtype=np.int64)
        for block in d.blocks:
            lo, hi = int(d.bounds[block.start]), int(d.bounds[block.stop])
            rows = slice(lo, hi)
            t = d.t_us[rows]
            fatigue = self._fatigue(rows, t)
            cost = static[rows] + policy.weights[FATIGUE] * fatigue
            utility = d.value[rows] - policy.cost_to_money * cost
            capacity = self._capacity(block)
            capped, room = self._capped(rows, t, bool(capacity.pods().any()))
            eligible = d.static_ok[rows] & ~capped & (utility > policy.reserve)
            r, _ = select(
                d.owner[rows] - block.start,
                eligible,
                utility,
                d.ad_code[rows],
                d.advertiser[lo:hi],
                d.category[lo:hi],
                d.duration_s[rows],
                capacity,
                room,
            )
            rank[rows] = r
            self._record(lo + np.flatnonzero(r > 0))
        return rank

    def _capacity(self, block: range) -> Capacity:
        cap = self.data.capacity
        assert cap is not None
        return Capacity(
            cap.max_ads[block.start : block.stop], cap.max_total_s[block.start : block.stop]
        )

    def _fatigue(self, rows: slice, t: np.ndarray) -> np.ndarray:
        """The fatigue cost from the simulation's own exposures, counted as the exposure
        features count them (``features.exposure``: 24h by UTC hours)."""
        out = np.zeros(len(t))
        for family, window_s, coeff in FATIGUE_FAMILIES:
            low, inclusive = window_floor(t, _WINDOW_NAMES[window_s])
            out += coeff * np.log1p(self.exposures[family].count(rows, t, low, inclusive))
        return out

    def _capped(self, rows: slice, t: np.ndarray, pods: bool) -> tuple[np.ndarray, PodRoom | None]:
        """Per row, whether a cap, gap or block refuses it; with ``pods``, also what the caps
        leave for the ads of a pod together (as the cap gate's ``PodRoom``)."""
        caps = self.config.caps
        capped = np.zeros(len(t), dtype=bool)
        width = len(caps.rules) + len(caps.min_gaps) if pods else 0
        keys = np.full((len(t), width), -1, dtype=np.int64)
        room = np.ones((len(t), width))
        for c, rule in enumerate(caps.rules):
            count = self._count(rule, rows, t)
            capped |= count >= rule.limit
            if width:
                keys[:, c] = self.exposures[rule.family()].key[rows]
                room[:, c] = rule.limit - count
        for c, gap in enumerate(caps.min_gaps, start=len(caps.rules)):
            lower = t - gap.min_gap_s * 1_000_000
            capped |= self.exposures[gap.family()].count(rows, t, lower, False) > 0
            if width:
                keys[:, c] = self.exposures[gap.family()].key[rows]
        for counter in self.feedback.values():
            capped |= counter.count(rows, t, t - self.block_us, False) > 0
        return capped, PodRoom(keys, room) if width else None

    def _count(self, rule: CapRule, rows: slice, t: np.ndarray) -> np.ndarray:
        counter = self.exposures[rule.family()]
        w = rule.window_s
        if w is None:
            return counter.lifetime(rows)
        if w * 1_000_000 <= self.retention_us:
            return counter.count(rows, t, t - w * 1_000_000, False)
        days = -(-w // 86_400)  # calendar days, today included (docs/caps.md)
        return counter.count(rows, t, (t // DAY_US - days + 1) * DAY_US, True)

    def _record(self, selected: np.ndarray) -> None:
        if not len(selected):
            return
        t = self.data.t_us[selected]
        for counter in self.exposures.values():
            counter.add(selected, t)
        fb = selected[self.blocking[selected]]
        for counter in self.feedback.values():
            counter.add(fb, self.data.t_us[fb])
