"""From a chunk of log rows to what an ad server would send: requests and exposure events.

The loops here run over requests (one ``ScoreRequest`` each, as a server receives them) and
over impressions (one event each, as ``RecordEvents`` carries them), never over candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from engine.caps.rules import CONVERSION
from engine.caps.store import Feedback, Impression
from engine.replay.source import RequestChunk
from engine.scoring.types import ScoreRequest
from features.online import REQUEST_FIELDS, RequestContext
from features.schema import CANDIDATE_COLUMNS

Events = tuple[list[Impression], list[Feedback]]
ID_COLUMNS = ("user_id", "household_id", "device_id")


def namespaced(chunk: RequestChunk, namespace: str) -> RequestChunk:
    """The chunk with user, household and device ids prefixed by ``namespace``: a replay
    whose ids no store has seen starts from an empty exposure history wherever it runs."""
    if not namespace:
        return chunk
    rows = chunk.rows.with_columns((pl.lit(namespace) + pl.col(c)).alias(c) for c in ID_COLUMNS)
    return RequestChunk(rows, chunk.bounds)


def to_requests(chunk: RequestChunk) -> list[ScoreRequest]:
    """One request per request of the chunk, its candidates as Python lists (all candidate
    columns the chunk has values for; a column null throughout is left out)."""
    rows = chunk.rows
    starts = chunk.bounds[:-1]
    heads = rows[starts].select(REQUEST_FIELDS)
    columns = {
        name: rows[name].to_list()
        for name in CANDIDATE_COLUMNS
        if rows[name].null_count() < len(rows)
    }
    out = []
    for i, head in enumerate(heads.iter_rows(named=True)):
        lo, hi = int(chunk.bounds[i]), int(chunk.bounds[i + 1])
        out.append(
            ScoreRequest(
                RequestContext.from_row(head),
                {name: values[lo:hi] for name, values in columns.items()},
            )
        )
    return out


_IMPRESSION_COLUMNS = (
    "request_id",
    "ts",
    "user_id",
    "touchpoint",
    "slot",
    "ad_id",
    "household_id",
    "device_id",
    "creative_id",
    "campaign_id",
    "advertiser_id",
    "category",
)


def impression_id(request_id: str, ad_id: str) -> str:
    """The idempotency key of an ad shown for a request."""
    return f"{request_id}:{ad_id}"


class ChunkEvents:
    """The exposure events any rows of a chunk would make, built only for the rows asked.

    An impression per row (id ``request_id:ad_id``, see :func:`impression_id`, so recording
    the same row twice counts once), plus the negative feedback and the conversion the log
    records for a row it showed (an unshown row has no outcome to replay), at the impression's
    time: what the block rules act on.
    """

    def __init__(self, chunk: RequestChunk) -> None:
        rows = chunk.rows
        self.bounds = chunk.bounds
        self._imp = [
            rows[c].cast(pl.String).to_list() if c not in ("ts",) else rows[c].to_list()
            for c in _IMPRESSION_COLUMNS
        ]
        kind = rows["negative_kind"].cast(pl.String)
        self._kind = kind.to_list()
        shown = rows["shown"].fill_null(False)
        self._has_feedback = (shown & kind.is_not_null()).to_numpy()
        converted = rows.get_column("converted", default=None)
        self._converted = (
            np.zeros(len(rows), dtype=bool)
            if converted is None
            else (shown & converted.fill_null(False)).to_numpy()
        )

    def rows(self, index: np.ndarray | list[int]) -> Events:
        """Events of the chunk rows ``index``."""
        impressions, feedback = [], []
        c = self._imp
        for j in index:
            imp = Impression(impression_id(c[0][j], c[5][j]), *(col[j] for col in c[1:]))
            impressions.append(imp)
            kinds = [self._kind[j]] if self._has_feedback[j] else []
            kinds += [CONVERSION] if self._converted[j] else []
            feedback += [
                Feedback(
                    imp.impression_id,
                    imp.ts,
                    kind,
                    imp.user_id,
                    imp.household_id,
                    imp.campaign_id,
                    imp.advertiser_id,
                    imp.category,
                )
                for kind in kinds
            ]
        return impressions, feedback

    def of_request(self, i: int, mask: np.ndarray) -> Events:
        """Events of the rows of request ``i`` that ``mask`` (over its candidates) selects."""
        lo = int(self.bounds[i])
        return self.rows(lo + np.flatnonzero(mask))


def row_values(rows: pl.DataFrame, name: str, default: Any = None) -> np.ndarray:
    """A column as numpy, nulls as ``default`` (NaN for floats when ``default`` is None)."""
    col = rows[name]
    if col.dtype == pl.Boolean:
        return col.fill_null(bool(default)).to_numpy()
    return col.cast(pl.Float64).fill_null(np.nan if default is None else default).to_numpy()
