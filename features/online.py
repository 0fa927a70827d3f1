"""Online inputs: requests and their candidates, assembled into the rows the features read.

The single-request form is the batch form with one request: :func:`assemble` turns any number
of requests into one frame in the log schema's dtypes (request values broadcast to their
candidates by one gather), plus the exposure columns the caller hands in. No Python loop runs
over candidates; the loops here are over requests and columns.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, chain
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from engine.errors import InvalidArgument
from features.exposure import EXPOSURE_SCHEMA, SINCE_COLUMNS
from features.schema import CANDIDATE_COLUMNS, COLUMN_BY_NAME

CandidateColumns = Mapping[str, Sequence[Any] | np.ndarray]
REQUIRED_CANDIDATE_COLUMNS = ("ad_id", "format", "bid", "pricing")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request-level part of an ad opportunity (see ``docs/log-schema.md``)."""

    request_id: str
    ts: datetime
    user_id: str
    touchpoint: str
    slot: str
    household_id: str | None = None
    device_id: str | None = None
    scene: str | None = None
    local_hour: int | None = None
    user_interests: tuple[str, ...] = ()
    age_band: str | None = None
    activity_level: str | None = None
    content_rating: str | None = None
    audience: str | None = None
    assistant_state: str | None = None
    blocked_categories: tuple[str, ...] = ()
    blocked_advertisers: tuple[str, ...] = ()
    content_categories: tuple[str, ...] = ()
    blocked_attributes: int | None = None  # bitmask, see features.schema.CREATIVE_ATTRIBUTES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RequestContext:
        """The request of a log row (a dict of the row's columns; extra keys are ignored)."""
        fields: dict[str, Any] = {name: row.get(name) for name in REQUEST_FIELDS}
        for name in LIST_FIELDS:
            fields[name] = tuple(row.get(name) or ())
        return cls(**fields)


REQUEST_FIELDS = tuple(f.name for f in fields(RequestContext))
# the request's lists of strings (interest tags, block lists): tuples here, list columns in a log
LIST_FIELDS = tuple(n for n in REQUEST_FIELDS if isinstance(COLUMN_BY_NAME[n].dtype, pl.List))


def _series(name: str, values: Any, field: str) -> pl.Series:
    """A Series in the schema dtype, built the cheap way (enums and times via a cast)."""
    dtype = COLUMN_BY_NAME[name].dtype
    try:
        if isinstance(dtype, pl.Enum):
            return pl.Series(name, values, dtype=pl.String).cast(dtype)
        if isinstance(dtype, pl.Datetime):
            micros = [_micros(v) for v in values]
            return pl.Series(name, micros, dtype=pl.Int64).cast(dtype)
        return pl.Series(name, values, dtype=dtype, strict=True)
    except (TypeError, ValueError, AttributeError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgument(field, f"cannot be read as {dtype}: {exc}") from exc


def _micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("naive datetime; a UTC-aware time is required")
    return (ts - _EPOCH) // _ONE_US


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _request_columns(
    requests: Sequence[RequestContext], needed: Collection[str]
) -> list[pl.Series]:
    for r in requests:  # checked even when no feature reads the time
        if not isinstance(r.ts, datetime) or r.ts.tzinfo is None:
            raise InvalidArgument("request.ts", f"must be a UTC-aware datetime, got {r.ts!r}")
    cols = []
    for name in REQUEST_FIELDS:
        if name not in needed:
            continue
        values = [getattr(r, name) for r in requests]
        if name in LIST_FIELDS:
            cols.append(_tags(name, values))
        elif len(values) == 1 and name in _FEW_VALUES and isinstance(values[0], str | int | None):
            cols.append(_one_value(name, values[0]))
        else:
            cols.append(_series(name, values, f"request.{name}"))
    return cols


_FEW_VALUES = frozenset(  # request columns with a small domain: enums and the local hour
    name
    for name in REQUEST_FIELDS
    if name in COLUMN_BY_NAME and isinstance(COLUMN_BY_NAME[name].dtype, pl.Enum | pl.Int8)
)


@lru_cache(maxsize=1024, typed=True)
def _one_value(name: str, value: Any) -> pl.Series:
    """A one-row column of ``name``, kept: a single request's enum or hour takes ~8 us to
    build and has a handful of possible values (the caller passes only str, int, None or ()). A
    value that cannot be read raises (and is not kept); ``typed`` keeps ``1`` and ``True``
    apart; ``()`` is an empty list."""
    return _series(name, [value], f"request.{name}")


def _tags(name: str, values: list[Any]) -> pl.Series:
    """A list field of each request (interest tags, block lists) as a list column.

    For many requests it is built from one flat array of tags and its offsets (polars takes
    ~4 us per request for a Python list of lists, Arrow's cost is that of a single request);
    one request, or tags that are not all strings, go through :func:`_series`, which builds
    or rejects them as it does any column. Requests whose lists are all empty (the common
    case of the block lists) repeat one kept empty list (~1 us, against ~20 us to build).
    """
    if values.count(()) == len(values):
        return _one_value(name, ()).new_from_index(0, len(values))
    if len(values) > 1 and all(isinstance(v, tuple | list) for v in values):
        flat = list(chain.from_iterable(values))  # a request's few tags, not its candidates
        if all(type(t) is str for t in flat):
            offsets = pa.array([0, *accumulate(len(v) for v in values)], pa.int32())
            lists = pa.ListArray.from_arrays(offsets, pa.array(flat, pa.string()))
            return pl.Series(name, lists)
    return _series(name, [list(v) for v in values], f"request.{name}")


_CANDIDATE_SET = frozenset(CANDIDATE_COLUMNS)


def _candidate_columns(
    candidates: Sequence[CandidateColumns], n: int, needed: Collection[str]
) -> list[pl.Series]:
    for i, cand in enumerate(candidates):
        for name in REQUIRED_CANDIDATE_COLUMNS:
            if name not in cand:
                raise InvalidArgument(f"requests[{i}].candidates.{name}", "missing")
        unknown = cand.keys() - _CANDIDATE_SET
        if unknown:
            raise InvalidArgument(
                f"requests[{i}].candidates.{sorted(unknown)[0]}", "unknown column"
            )
    cols = []
    for name in CANDIDATE_COLUMNS:
        if name not in needed:
            continue
        if len(candidates) == 1 and name in candidates[0]:
            values: Any = candidates[0][name]
        elif any(name in c for c in candidates):
            values = []
            for c in candidates:  # a loop over requests: extend copies each list at C speed
                # a request without the column: its candidates have no value (as alone)
                values.extend(c[name] if name in c else [None] * len(c["ad_id"]))
        else:
            cols.append(_nulls(name, n))
            continue
        if type(values) is list and values and values[0] is None and values.count(None) == n:
            cols.append(_nulls(name, n))  # the common optional column: nothing known
            continue
        cols.append(_series(name, values, f"candidates.{name}"))
    return cols


def _nulls(name: str, n: int) -> pl.Series:
    """A column of ``n`` nulls in the schema dtype: one kept null repeated (a Series from a
    list of Nones costs 30-140 us at 3,200 rows, the repeat 3)."""
    return _one_value(name, None).new_from_index(0, n)


def exposure_matrix(exposures: Sequence[np.ndarray | None], sizes: Sequence[int]) -> np.ndarray:
    """Stack per-request exposure matrices (``None``: no history) into one (n, k) array.

    Each matrix has one row per candidate and one column per ``EXPOSURE_SCHEMA`` column, in
    that order, as float64; a null recency is NaN.

    Raises:
        InvalidArgument: a matrix whose shape does not fit its request.
    """
    width = len(EXPOSURE_SCHEMA)
    parts = []
    for i, (size, exp) in enumerate(zip(sizes, exposures, strict=True)):
        if exp is None:
            parts.append(_NO_HISTORY_ROW if size == 1 else np.tile(_NO_HISTORY_ROW, (size, 1)))
            continue
        arr = np.asarray(exp, dtype=np.float64)
        if arr.shape != (size, width):
            raise InvalidArgument(
                f"requests[{i}].exposures", f"has shape {arr.shape}, expected ({size}, {width})"
            )
        parts.append(arr)
    if not parts:
        return np.empty((0, width))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


_NO_HISTORY_ROW = np.array([[np.nan if name in SINCE_COLUMNS else 0.0 for name in EXPOSURE_SCHEMA]])


def assemble(
    requests: Sequence[RequestContext],
    candidates: Sequence[CandidateColumns],
    columns: Collection[str] = (*REQUEST_FIELDS, *CANDIDATE_COLUMNS),
) -> pl.DataFrame:
    """Rows (one per candidate) of many requests, in schema dtypes: the given ``columns``
    (default all; the feature core asks for the ones its expressions read).

    Args:
        requests: the requests, in order.
        candidates: per request, its candidates as columns (``ad_id``, ``format``, ``bid`` and
            ``pricing`` required; other candidate columns of the schema optional).

    Raises:
        InvalidArgument: a missing or unknown column, a value of the wrong type or outside its
            vocabulary, or columns of unequal length.
    """
    if len(candidates) != len(requests):
        raise InvalidArgument("candidates", "one candidate set per request is required")
    sizes = candidate_counts(candidates)
    req = _request_columns(requests, columns)
    if len(requests) == 1:  # broadcast: cheaper than a gather for one request
        broadcast = [s.new_from_index(0, sizes[0]) for s in req]
    else:
        owner = pl.Series(np.repeat(np.arange(len(requests), dtype=np.uint32), sizes))
        broadcast = pl.DataFrame(req)[owner].get_columns()
    return pl.DataFrame(broadcast + _candidate_columns(candidates, sum(sizes), columns))


def candidate_counts(candidates: Sequence[CandidateColumns]) -> list[int]:
    """Number of candidates per request, checking that every column has that length."""
    sizes = [len(c["ad_id"]) if "ad_id" in c else 0 for c in candidates]
    for i, c in enumerate(candidates):
        for name, values in c.items():
            if len(values) != sizes[i]:
                raise InvalidArgument(
                    f"requests[{i}].candidates.{name}",
                    f"has {len(values)} values, expected {sizes[i]}",
                )
    return sizes
