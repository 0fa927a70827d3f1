"""Counting on a sorted line: the kernels behind the offline exposure counts.

Rows keyed by a dense integer code and a time in microseconds are sorted by (code, time) and laid
on one integer line: ``rank(code) * span + (time - origin)``, with ``span`` wider than the log
plus the longest window. On that line every question about "events of the same key in a window
before this row" becomes a question about positions: the events strictly before a row are the
events left of it (earlier keys included), and an event leaves a window ``w`` at its own
position plus ``w`` (events of earlier keys have left every window by the time the next key
starts). So a count is a difference of two "events left of a position" tallies, and each tally is
one merge of the (sorted) events into the (sorted) rows, a ``bincount`` and a ``cumsum``: no loop
over rows and no search per row.

Keys are small dense integers (:func:`dense_codes`), so the sort is numpy's radix sort when a
(scope, target) pair fits 16 bits, and one polars sort otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_LINE_LIMIT = 2**62
_LUT_SLACK = 1_024


@dataclass(frozen=True)
class Codes:
    """Exact integer codes of one id column.

    Attributes:
        code: per row, 0 for null and ``1..size-1`` for the values (one code per distinct value;
            the numbering is arbitrary).
        size: number of codes, null included.
        valid: per row, whether the id is not null.
    """

    code: np.ndarray
    size: int
    valid: np.ndarray


def dense_codes(frame: pl.DataFrame, columns: list[str]) -> dict[str, Codes]:
    """Dense exact codes of id columns (any strings), so keys sort as small integers."""
    raw = frame.select(
        [
            pl.col(c).cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.Int64) + 1
            for c in columns
        ]
    ).fill_null(0)
    return {c: _densify(raw[c].to_numpy()) for c in columns}


def _densify(raw: np.ndarray) -> Codes:
    """Renumber non-negative codes (0 is null) as ``0..size-1`` keeping 0 for null."""
    valid = raw > 0
    top = int(raw.max()) + 1 if len(raw) else 1
    if top > 4 * len(raw) + _LUT_SLACK:  # sparse codes: sort instead of a lookup table
        values, code = np.unique(np.r_[0, raw], return_inverse=True)
        return Codes(code[1:], len(values), valid)
    seen = np.zeros(top, dtype=bool)
    seen[raw] = True
    seen[0] = True
    lookup = np.cumsum(seen, dtype=np.int64) - 1
    return Codes(lookup[raw], int(lookup[-1]) + 1, valid)


def pair_codes(first: Codes, second: Codes) -> Codes:
    """Codes of the (first, second) pair: null when either is null."""
    code = first.code * second.size + second.code
    return Codes(code, first.size * second.size, first.valid & second.valid)


def stable_order(code: np.ndarray, size: int) -> np.ndarray:
    """Indices sorting ``code`` (values in ``0..size-1``), ties kept in input order."""
    if size <= 1 << 16:  # numpy sorts 16-bit integers stably with a radix sort
        return np.argsort(code.astype(np.uint16), kind="stable")
    key = pl.Series("k", code, dtype=pl.UInt32 if size <= 1 << 32 else pl.UInt64)
    order = key.to_frame().select(pl.arg_sort_by("k", maintain_order=True)).to_series()
    return order.to_numpy().astype(np.intp)  # numpy indexes with intp: convert once


@dataclass(frozen=True)
class Line:
    """Rows sorted by (code, time) and their positions on the line.

    Attributes:
        order: row indices in (code, time) order (time order kept from the input).
        pos: sorted positions, ``rank * span + offset`` with ``offset >= 1``.
        base: per sorted row, ``rank * span``: a position ``p`` is of the same key iff
            ``base < p < base + span``.
    """

    order: np.ndarray
    pos: np.ndarray
    base: np.ndarray


def line(codes: Codes, offset: np.ndarray, span: int) -> Line:
    """Lay rows on the line; ``offset`` (>= 1, < span) is each row's time from the origin.

    Rows must be in time order so that a stable sort by code leaves each key's rows in time
    order.

    Raises:
        OverflowError: the log is too long or has too many keys for one int64 line.
    """
    order = stable_order(codes.code, codes.size)
    n = len(order)
    if codes.size <= 4 * n + _LUT_SLACK:  # rows per code, then ranks laid out without a gather
        per_code = np.bincount(codes.code, minlength=codes.size)
        rank = np.cumsum(per_code > 0, dtype=np.int64)
        _check_fits(int(rank[-1]), span)
        base = np.repeat(rank * span, per_code)
    else:
        code = codes.code[order]
        new_key = np.empty(n, dtype=bool)
        new_key[:1] = True
        np.not_equal(code[1:], code[:-1], out=new_key[1:])
        rank = np.cumsum(new_key, dtype=np.int64)
        _check_fits(int(rank[-1]) if n else 0, span)
        base = rank * span
    return Line(order, base + offset[order], base)


def _check_fits(keys: int, span: int) -> None:
    if (keys + 1) * span >= _LINE_LIMIT:
        raise OverflowError("log too long or too many keys for one pass")  # ~100 days x 1e6 keys


def events_left_of(rows: np.ndarray, events: np.ndarray, shift: int, inclusive: bool) -> np.ndarray:
    """Per row position ``p`` (sorted), the number of events ``e`` (sorted) with
    ``e + shift < p``, or ``e + shift <= p`` when ``inclusive``."""
    first = first_row_after(rows, events + shift, inclusive)
    return np.cumsum(np.bincount(first, minlength=len(rows) + 1)[:-1], dtype=np.int32)


def first_row_after(rows: np.ndarray, needles: np.ndarray, inclusive: bool) -> np.ndarray:
    """``np.searchsorted(rows, needles, "left" if inclusive else "right")`` for sorted needles,
    as one merge of the two sorted arrays (a forward as-of join) instead of a search each."""
    right = pl.LazyFrame({"p": rows}).with_row_index("i").set_sorted("p")
    left = pl.LazyFrame({"p": needles}).set_sorted("p")
    found = left.join_asof(right, on="p", strategy="forward", allow_exact_matches=inclusive)
    index = found.select(pl.col("i").fill_null(len(rows))).collect().to_series()
    return index.to_numpy()


def since_last(lin: Line, events: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Per sorted row, its distance on the line to the latest event of its key strictly before
    it (``before`` is the number of events left of each row), NaN when there is none."""
    if not len(events):
        return np.full(len(lin.pos), np.nan)
    last = events[np.maximum(before - 1, 0)]
    dist = (lin.pos - last).astype(np.float64)
    dist[(before == 0) | (last <= lin.base)] = np.nan
    return dist


def unsort(values: np.ndarray, order: np.ndarray, dtype: type) -> np.ndarray:
    """Values given in sorted order, back in input order."""
    out: np.ndarray = np.empty(len(order), dtype=dtype)
    out[order] = values
    return out
