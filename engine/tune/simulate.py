"""What the engine would have shown with given weights: the log replayed in causal blocks.

Requests are taken in time order in blocks that never hold one user, household or device twice
(``engine.replay.causal.causal_spans``), so every request sees the exposures of all earlier
ones exactly, as in production. Per block, vectorised over its rows: the policy's own exposure
counts give the caps, gaps, feedback blocks and the fatigue cost; the utility is
``expected value - cost_to_money x weights . costs``; the engine's own selection
(``engine.scoring.selection.select``) fills each slot; the selected ads are recorded into the
counters (and, for rows the log showed with an outcome a block rule acts on, that block). The
loop runs over blocks (thousands per million rows), never over rows or requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.caps.rules import CONVERSION, BlockRule, CapRule, Family, parse_duration
from engine.config import COST_COMPONENTS, AdmatchConfig
from engine.scoring.selection import Capacity, select
from engine.scoring.types import PodRoom
from engine.tune.counters import FamilyCounter
from engine.tune.data import FATIGUE, FATIGUE_FAMILIES, TuningData, Warm, block_families
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


@dataclass(frozen=True)
class _Block:
    """A block rule in the simulation: its counters (the user's, the household's), how long a
    block lasts, and per row whether the log says it set one (shown, with that outcome)."""

    counters: list[FamilyCounter]
    duration_us: int
    sets: np.ndarray


def sets_block(rule: BlockRule, feedback_kind: np.ndarray, converted: np.ndarray) -> np.ndarray:
    """Per row, whether its logged outcome sets the rule's block (a feedback kind it names, or
    a conversion when it names ``conversion``)."""
    kinds = [k for k in rule.on if k != CONVERSION]
    out = np.isin(feedback_kind, kinds)
    return out | converted if CONVERSION in rule.on else out


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
        self.competing = caps.competitor_of  # what a pod keeps apart besides equal categories
        self.gaps = caps.gap_rules  # min_gaps, then the separation rules'
        for gap in self.gaps:
            depth[gap.family()] = max(depth.get(gap.family(), 1), 2)
        self.exposures = {f: self._counter(f, d) for f, d in depth.items()}
        self.blocks = [
            _Block(
                [self._counter(f, 2) for f in block_families(rule)],
                rule.duration_s * 1_000_000,
                data.shown & sets_block(rule, data.feedback_kind, data.converted),
            )
            for rule in caps.block_rules
        ]
        if data.warm is not None:
            self._warm(data.warm)

    def _counter(self, family: Family, depth: int) -> FamilyCounter:
        warm = self.data.warm
        keys = int(warm.keys[family].max()) + 1 if warm and warm.impressions else 0
        return FamilyCounter(self.data.family_keys[family], depth, keys)

    def _warm(self, warm: Warm) -> None:
        """Start every trial from the exposures (and the blocks they set) before the log."""
        for family, counter in self.exposures.items():
            counter.add_keys(warm.keys[family], warm.t_us)
            counter.start_here()
        for rule, block in zip(self.config.caps.block_rules, self.blocks, strict=True):
            sets = sets_block(rule, warm.feedback_kind, warm.converted)
            for family, counter in zip(block_families(rule), block.counters, strict=True):
                counter.add_keys(warm.keys[family][sets], warm.t_us[sets])
                counter.start_here()

    def run(self, policy: Policy) -> np.ndarray:
        """Per row, the rank the policy gives it (1-based among the selected, 0 if not)."""
        d = self.data
        for c in [*self.exposures.values(), *(c for b in self.blocks for c in b.counters)]:
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
                self.competing,
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
        gaps = self.gaps
        width = len(caps.rules) + len(gaps) if pods else 0
        keys = np.full((len(t), width), -1, dtype=np.int64)
        room = np.ones((len(t), width))
        for c, rule in enumerate(caps.rules):
            count = self._count(rule, rows, t)
            capped |= count >= rule.limit
            if width:
                keys[:, c] = self.exposures[rule.family()].key[rows]
                room[:, c] = rule.limit - count
        for c, gap in enumerate(gaps, start=len(caps.rules)):
            lower = t - gap.min_gap_s * 1_000_000
            capped |= self.exposures[gap.family()].count(rows, t, lower, False) > 0
            if width:
                keys[:, c] = self.exposures[gap.family()].key[rows]
        for block in self.blocks:
            for counter in block.counters:
                capped |= counter.count(rows, t, t - block.duration_us, False) > 0
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
        for block in self.blocks:
            sets = selected[block.sets[selected]]
            for counter in block.counters:
                counter.add(sets, self.data.t_us[sets])
