"""The shape of a request's cap-store lookups: everything a plan needs that does not depend on
its candidates, built once per situation (touchpoint, slot, which scope ids the request has,
the shapes of its campaigns' own caps) and cached by ``plan.Planner``.

A shape lists *lookups*: families (scope x target, optionally filtered) read for one group of
candidate ids (campaign_id, advertiser_id, ...; the target any is a group of its own with the
one field "*"). Every answer of a group's lookups for one field forms one *row*, so the answers
of a whole request are one small matrix per group, gathered to candidates by one numpy
indexing (the shape precomputes where each answer goes: ``store.place``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine.caps.rules import TARGET_COLUMN, BlockRule, CapRule, Family, GapRule
from features.exposure import (
    BUCKET_S,
    EXPOSURE_SCHEMA,
    RECENCY_WINDOW,
    SCOPES,
    WINDOWS_S,
    count_column,
    since_column,
)

FEATURE_FAMILIES = tuple(
    Family(scope=s, target=t)
    for s in ("user", "household", "device")
    for t in ("campaign", "advertiser", "any")
)
N_EXPOSURES = len(EXPOSURE_SCHEMA)
_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}
RECENCY_S = WINDOWS_S[RECENCY_WINDOW]  # the campaign recency looks back no further
# a campaign recency is null where its scope's campaign count over the recency window is 0
_RECENCY_GUARD = {
    _EXPOSURE_INDEX[since_column(s)]: _EXPOSURE_INDEX[count_column(s, "campaign", RECENCY_WINDOW)]
    for s in SCOPES
}


@dataclass(frozen=True)
class Lookup:
    """One family read for one group of target ids.

    Attributes:
        family: the counter family (its scope id comes from the request).
        group: the group of target ids it reads (see :attr:`Shape.columns`).
        windows: rolling windows in seconds (<= retention), counted exactly; ascending.
        day_windows: longer windows in days (0 = lifetime), from day counts; ascending.
        buckets: bucketed windows (``features.exposure.BUCKET_S``), as (bucket hours: 1 or
            24, buckets): from the start of the bucket that many back, before ``t``.
        last: whether the time of the latest impression is wanted (at most the shape's
            ``latest_lookback_s`` before ``t``: -1 when there is none that recent).
        offset: where its answers start in its group's rows.
    """

    family: Family
    group: int
    windows: tuple[int, ...]
    day_windows: tuple[int, ...]
    buckets: tuple[tuple[int, int], ...]
    last: bool
    offset: int

    @property
    def width(self) -> int:
        """Answers per field: window counts, day sums, bucket counts, latest time."""
        return len(self.windows) + len(self.day_windows) + len(self.buckets) + int(self.last)

    def column(self, kind: str, window: int | tuple[int, int]) -> int:
        """Column in the group's rows of the answer ``kind`` (window, days, bucket, since)."""
        if kind == "window":
            return self.offset + self.windows.index(window)
        if kind == "days":
            return self.offset + len(self.windows) + self.day_windows.index(window)
        if kind == "bucket":
            before = len(self.windows) + len(self.day_windows)
            return self.offset + before + self.buckets.index(window)
        return self.offset + self.width - 1


@dataclass(frozen=True)
class Target:
    """An answer placed in an output column: ``output`` is ``exposures``, ``rule_counts`` or
    ``gap_since``; ``index`` its column there; ``column`` the answer's column in the group's
    rows; ``rule`` >= 0 binds it to the candidates of that rule's campaign only."""

    output: str
    index: int
    group: int
    column: int
    since: bool
    rule: int = -1


@dataclass(frozen=True)
class BlockSpec:
    """The block hashes of one target a request reads: for its ``group``'s ids, one hash per
    scope (the user's; the household's too when a rule of the target says so)."""

    group: int
    target: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Shape:
    """The candidate-independent part of a plan (cached per situation)."""

    columns: tuple[str | None, ...]
    lookups: tuple[Lookup, ...]
    targets: tuple[Target, ...]
    widths: tuple[int, ...]
    blocks: tuple[BlockSpec, ...]
    n_rules: int
    n_gaps: int
    # every answer a candidate gathers from its groups' rows (not own caps'), as five blocks
    # of one int64 array (the compiled placement's layout: ``kernel.place``): its group, its
    # column in the group's rows, the group's row width, its output column, and 1 if a null
    # id means the rule does not apply (NaN: a rule or gap, not an exposure count)
    gather: np.ndarray = field(repr=False)
    latest: tuple[tuple[int, int], ...] = field(repr=False)  # (group, column) of latest times
    since_outputs: np.ndarray = field(repr=False)
    # per since output, the output column that must be non-zero for it to stand (a recency's
    # count over the recency window), or -1
    since_guards: np.ndarray = field(repr=False)
    # what a candidate reads when none of its ids has history (its rule counts 0, no latest
    # time), and each campaign's own cap with its output column (see ``store.place``)
    base_row: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    own_targets: tuple[tuple[Target, int], ...] = field(default=(), repr=False)
    # how far back a latest time is read (seconds): the recency's window and the shape's
    # longest minimum gap; the event log keeps at least that much (``keep.log_span_s``)
    latest_lookback_s: int = RECENCY_S

    def output_column(self, target: Target) -> int:
        """Column of a target in the concatenated outputs (exposures, rule_counts, gap_since)."""
        return _output_column(target, self.n_rules)


def _output_column(target: Target, n_rules: int) -> int:
    base = {"exposures": 0, "rule_counts": N_EXPOSURES, "gap_since": N_EXPOSURES + n_rules}
    return base[target.output] + target.index


class _Builder:
    """Collects a shape's lookups and targets, then orders and indexes them."""

    def __init__(self) -> None:
        self.specs: dict[Family, tuple[set[int], set[int], set[tuple[int, int]], list[bool]]] = {}
        self.raw: list[tuple[str, int, Family, str, Any, int]] = []

    def need(self, fam: Family, kind: str, window: Any, output: str, index: int, rule: int) -> None:
        windows, days, buckets, last = self.specs.setdefault(fam, (set(), set(), set(), [False]))
        if kind == "window":
            windows.add(window)
        elif kind == "days":
            days.add(window)
        elif kind == "bucket":
            buckets.add(window)
        else:
            last[0] = True
        self.raw.append((output, index, fam, kind, window, rule))

    def build(self, blocks: dict[str, tuple[str, ...]], counts: tuple[int, int]) -> Shape:
        """``blocks``: per block target, the scopes of its hashes."""
        columns: list[str | None] = []
        for target in [*(f.target for f in self.specs), *blocks]:
            if TARGET_COLUMN[target] not in columns:
                columns.append(TARGET_COLUMN[target])
        order = sorted(self.specs, key=lambda f: columns.index(TARGET_COLUMN[f.target]))
        lookups: dict[Family, Lookup] = {}
        widths = [0] * len(columns)
        for fam in order:
            windows, days, buckets, last = self.specs[fam]
            g = columns.index(TARGET_COLUMN[fam.target])
            lk = Lookup(
                fam,
                g,
                tuple(sorted(windows)),
                tuple(sorted(days)),
                tuple(sorted(buckets)),
                last[0],
                widths[g],
            )
            lookups[fam] = lk
            widths[g] += lk.width
        targets = tuple(
            Target(
                output,
                index,
                lookups[fam].group,
                lookups[fam].column(kind, window),
                kind == "since",
                rule,
            )
            for output, index, fam, kind, window, rule in self.raw
        )
        return _finish(
            Shape(
                tuple(columns),
                tuple(lookups.values()),
                targets,
                tuple(widths),
                tuple(
                    BlockSpec(columns.index(TARGET_COLUMN[target]), target, scopes)
                    for target, scopes in blocks.items()
                ),
                *counts,
                np.zeros(0, dtype=np.int64),
                (),
                np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.int64),
            )
        )


def _finish(shape: Shape) -> Shape:
    """The shape with its decoding tables: the gathers, the latest times' cells, the base row."""
    defaults = [np.zeros(w) for w in shape.widths]
    for lk in shape.lookups:
        if lk.last:
            defaults[lk.group][lk.offset + lk.width - 1] = -1.0
    gathered = [t for t in shape.targets if t.rule < 0]

    dest = [shape.output_column(t) for t in gathered]
    base = np.full(N_EXPOSURES + shape.n_rules + shape.n_gaps, np.nan)
    base[:N_EXPOSURES] = [0.0 if name.startswith("exp_") else np.nan for name in _EXPOSURE_INDEX]
    since = sorted({shape.output_column(t) for t in shape.targets if t.since})
    base[dest] = [defaults[t.group][t.column] for t in gathered]
    base[since] = np.nan  # no latest time: no seconds since
    return replace(
        shape,
        gather=np.asarray(
            [t.group for t in gathered]
            + [t.column for t in gathered]
            + [shape.widths[t.group] for t in gathered]
            + dest
            + [int(t.output != "exposures") for t in gathered],
            dtype=np.int64,
        ),
        latest=tuple((lk.group, lk.offset + lk.width - 1) for lk in shape.lookups if lk.last),
        since_outputs=np.asarray(since, dtype=np.int64),
        since_guards=np.asarray([_RECENCY_GUARD.get(c, -1) for c in since], dtype=np.int64),
        base_row=base,
        own_targets=tuple((t, shape.output_column(t)) for t in shape.targets if t.rule >= 0),
    )


def build_shape(
    touchpoint: str,
    slot: str,
    scopes: frozenset[str],
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    blocks: Sequence[BlockRule],
    retention_s: int,
) -> Shape:
    """The lookups a request in this situation needs (``scopes``: the scope ids it has)."""
    builder = _Builder()
    for fam in FEATURE_FAMILIES:
        if fam.scope not in scopes:
            continue
        for window, seconds in WINDOWS_S.items():
            col = _EXPOSURE_INDEX[count_column(fam.scope, fam.target, window)]
            bucket = BUCKET_S[window]
            if bucket:
                buckets = (bucket // 3_600, seconds // bucket)
                builder.need(fam, "bucket", buckets, "exposures", col, -1)
            else:
                builder.need(fam, "window", seconds, "exposures", col, -1)
        if fam.target == "campaign":
            builder.need(fam, "since", 0, "exposures", _EXPOSURE_INDEX[since_column(fam.scope)], -1)
    for j, rule in enumerate(rules):
        if rule.scope in scopes and rule.matches(touchpoint, slot):
            w = rule.window_s
            only = j if rule.campaign_id is not None else -1
            if w is not None and w <= retention_s:
                builder.need(rule.family(), "window", w, "rule_counts", j, only)
            else:
                days = 0 if w is None else -(-w // 86_400)
                builder.need(rule.family(), "days", days, "rule_counts", j, only)
    lookback = RECENCY_S
    for j, gap in enumerate(gaps):
        if gap.scope in scopes and gap.matches(touchpoint, slot):
            builder.need(gap.family(), "since", 0, "gap_since", j, -1)
            lookback = max(lookback, gap.min_gap_s)
    block_scopes: dict[str, tuple[str, ...]] = {}
    for block in blocks:
        household = block.household and "household" in scopes
        if household or block.target not in block_scopes:
            block_scopes[block.target] = ("user", "household") if household else ("user",)
    shape = builder.build(block_scopes, (len(rules), len(gaps)))
    return replace(shape, latest_lookback_s=lookback)
