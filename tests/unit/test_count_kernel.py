"""The compiled loop of the cap reads (``engine/caps/_count.pyx``) refuses inputs that would
make it read or write out of bounds, with a ValueError naming what is wrong: its callers turn
that into a failed read of one household (``_readable``), never a crash of the service. What
it computes is pinned by ``test_eventlog.py`` against the in-memory reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.caps import _count, eventlog
from engine.caps.plan import Planner
from engine.caps.store import Answers
from tests.integration.test_cap_store_contract import BLOCKS, COMPETING, GAPS, RULES
from tests.unit.test_eventlog import (
    CAMPAIGN,
    PLACES,
    RETENTION_S,
    _case,
    _impression,
    _plan,
    _write,
)


def _args() -> dict[str, Any]:
    """The kernel's arguments for a real read of a small household."""
    return _read()[1]


def _read() -> tuple[Any, dict[str, Any]]:
    """A plan and the kernel's arguments to answer it from a small household's log."""
    rows = [("u1", PLACES[k % 3], "c1", "cr1", 10 * k, False) for k in range(6)]
    log = eventlog.Log(_write([_impression(n, row) for n, row in enumerate(rows)]))
    plan = _plan(Planner(RULES, GAPS, BLOCKS, RETENTION_S, COMPETING), "u1", PLACES[0], 100)
    return plan, _kernel_args(plan, log)


def _kernel_args(plan: Any, log: eventlog.Log) -> dict[str, Any]:
    """The kernel's arguments to answer ``plan`` from ``log`` (the arrays a test may damage
    copied)."""
    c = eventlog._columns(plan.shape)
    out = Answers(plan)
    return {
        "flat": out.flat,
        "group_base": out.offsets,
        "program": c.program.copy(),
        "sizes": np.asarray([len(f) for f in plan.fields], dtype=np.int64),
        "names": np.asarray(
            [eventlog.fp_value(n) for n in eventlog._names(plan, c)], dtype=np.uint64
        ),
        "t0": plan.t_us,
        "inclusive": False,
        "latest_from": plan.t_us - plan.shape.latest_lookback_s * 10**6,
        "events": log.events,
        "tuples": log.tuples.copy(),
        "fps": log.fps,
        "day_head": log.day_head,
        "day_body": log.day_body.copy(),
        "day_base": log.day_base,
    }


def test_a_whole_read_counts() -> None:
    args = _args()
    _count.count(**args)
    assert args["flat"].max() > 0  # the household's impressions are counted somewhere


def _set(name: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def change(args: dict[str, Any]) -> None:
        args[name] = value(args[name])

    return change


def _poke(name: str, index: Any, value: int) -> Callable[[dict[str, Any]], None]:
    def change(args: dict[str, Any]) -> None:
        args[name][index] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("program", lambda p: p[:-1]), "program"),
        (_poke("program", 0, 70), "program"),  # more groups than the layout holds
        (_poke("program", 7, 9), "ad tuple column"),  # group 0 (after the header of 7): 9 of 6
        (_set("flat", lambda f: f[: len(f) // 2].copy()), "past the answers"),
        (_set("sizes", lambda s: s[:-1].copy()), "one per group"),
        (_set("names", lambda n: n[:-1].copy()), "names"),
        (_poke("tuples", (1, 2), 60_000), "past the dictionary"),
        (_set("tuples", lambda t: t[:, :5].copy()), "6 codes"),
    ],
    ids=[
        "short-program",
        "groups",
        "target",
        "short-answers",
        "sizes",
        "names",
        "tuple-code",
        "tuple-width",
    ],
)
def test_inputs_out_of_bounds_are_refused(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    args = _args()
    change(args)
    with pytest.raises(ValueError, match=message):
        _count.count(**args)


def test_an_event_naming_a_tuple_past_the_tuples_is_refused() -> None:
    args = _args()
    events = args["events"].copy()
    events["ad"][0] = len(args["tuples"])
    args["events"] = events
    with pytest.raises(ValueError, match="past the household's tuples"):
        _count.count(**args)


def _folded_args() -> dict[str, Any]:
    """The kernel's arguments for a read of a household whose log was folded: 45 days of
    impressions, most of them in day counts."""
    campaigns = sorted(CAMPAIGN)
    rows = [
        ("u1", PLACES[0], campaigns[k % 3], "cr1", 60 * (24 * k + 12), False) for k in range(45)
    ]
    plan, log, _ = _case(rows, "u1", PLACES[0], 1, fold=True, inclusive=False)
    assert len(log.day_head) and len(log.day_body)
    return _kernel_args(plan, log)


def _first_run_code(code: int) -> Callable[[dict[str, Any]], None]:
    """Set the target code of every group's first run: its head byte, the code's rise times 2
    (no lifetime follows; one byte: codes here are < 64)."""

    def change(args: dict[str, Any]) -> None:
        for start in args["day_head"]["start"].tolist():
            args["day_body"][start] = 2 * code

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("day_body", lambda b: b[: len(b) // 2].copy()), "past the body"),
        (_set("day_body", lambda b: b | 0x80), "runs past its group"),
        (_first_run_code(0), "names code 0"),
        (_first_run_code(63), "names code 63"),
    ],
    ids=["short-body", "endless-number", "null-code", "code-past-dictionary"],
)
def test_damaged_day_counts_are_refused(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    args = _folded_args()
    _count.count(**{**args, "flat": args["flat"].copy()})  # the undamaged read counts
    change(args)
    with pytest.raises(ValueError, match=message):
        _count.count(**args)


def test_damaged_day_counts_are_refused_to_a_fold() -> None:
    args = _folded_args()
    body = args["day_body"]
    start, n = int(args["day_head"]["start"][0]), int(args["day_head"]["n"][0])
    _count.day_records(body, start, start + n, args["day_base"])
    with pytest.raises(ValueError, match="past the body"):
        _count.day_records(body, start, len(body) + 1, args["day_base"])
    with pytest.raises(ValueError, match="runs past its group"):
        _count.day_records(body | 0x80, start, start + n, args["day_base"])


def _place_args() -> dict[str, Any]:
    """The placement's arguments for the read of :func:`_read`, answered."""
    plan, args = _read()
    _count.count(**args)
    return {
        "out": np.empty((plan.n, len(plan.shape.base_row))),
        "base_row": plan.shape.base_row,
        "flat": args["flat"],
        "offsets": args["group_base"],
        "safe_rows": plan.safe_rows.copy(),
        "last_row": np.asarray([len(f) for f in plan.fields], dtype=np.int64),
        "gather": plan.shape.gather.copy(),
        "since": plan.shape.since_outputs,
        "guards": plan.shape.since_guards,
        "t_us": plan.t_us,
        "nulls": False,
    }


def test_a_whole_placement_fills_every_row() -> None:
    args = _place_args()
    _count.place(**args)
    assert np.isfinite(args["out"][:, 0]).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (_poke("safe_rows", (0, 0), 10_000), "reads row"),
        (_poke("safe_rows", (0, 0), -1), "reads row"),
        (_poke("gather", 0, 99), "out of range"),  # a group past the plan's
        (_set("gather", lambda g: g[:-1].copy()), "five blocks"),
        (_set("flat", lambda f: f[:3].copy()), "past the answers"),
        (_set("since", lambda s: np.asarray([10_000], dtype=np.int64)), "since"),
        (_set("guards", lambda s: np.full(len(s), 10_000, dtype=np.int64)), "guard"),
        (_set("guards", lambda s: s[:-1].copy()), "guards"),
        (_set("last_row", lambda r: r[:-1].copy()), "last_row"),
        (_set("out", lambda o: o[:, :-1].copy()), "base_row"),
    ],
    ids=[
        "row-past",
        "row-negative",
        "group",
        "gather-blocks",
        "short-answers",
        "since",
        "guard-past",
        "guards-short",
        "last",
        "out",
    ],
)
def test_placements_out_of_bounds_are_refused(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    args = _place_args()
    change(args)
    with pytest.raises(ValueError, match=message):
        _count.place(**args)
