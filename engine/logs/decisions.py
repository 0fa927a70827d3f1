"""The service's own logs, their schemas and rows: every Score decision and every reported
event, as Parquet, beside each other (docs/loop.md; written by engine/logs/serving.py).
``admatch logs join`` turns them into the ad-opportunity log.

A decision log file is itself an ad-opportunity log (docs/log-schema.md): one row per
(request, candidate) with the request and candidate columns, ``shown`` (the service selected it)
and ``propensity`` (the probability it had: null where 0), no outcome yet, then the decision's
own columns (``DECISION_EXTRAS``). An event log file has one row per reported event
(``EVENT_SCHEMA``). Each file names its kind and version in its Parquet metadata
(``admatch.log``: ``decisions/1``, ``events/1``); readers refuse another version by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa

from engine.config import COST_COMPONENTS
from engine.errors import LogSchemaError
from engine.logs.names import DECISIONS as DECISIONS
from engine.logs.spool import FLOATS, Record
from engine.scoring.types import IMPRESSION_SEPARATOR, REASON_NAMES, ScoreRequest
from features.online import CANDIDATE_COLUMNS, REQUEST_FIELDS, assemble
from features.schema import polars_schema

VERSION = "1"
META_KEY = "admatch.log"
EVENTS = "events"
_LOG = polars_schema(include_truth=False)
DECISION_EXTRAS = pl.Schema(
    {  # type: ignore[arg-type]  # polars types the values loosely
        "reason": pl.String,
        "rank": pl.Int16,
        "current_rank": pl.Int16,
        "p_engage": pl.Float64,
        "p_negative": pl.Float64,
        "expected_value": pl.Float64,
        **{f"cost_{c}": pl.Float64 for c in COST_COMPONENTS},
        "cost_total": pl.Float64,
        "utility": pl.Float64,
        "impression_id": pl.String,
        "reserved": pl.Boolean,
        "selection_propensity": pl.Float64,
        "no_ad_propensity": pl.Float64,
        "exploration_variant": pl.Int16,
        "exploration_share": pl.Float64,
        "cap_store_unavailable": pl.Boolean,
        "model_version": pl.String,
        "config_version": pl.String,
        "worker": pl.String,
        "logged_at": pl.Datetime("us", "UTC"),
    }
)
_REASON_NAME = dict(enumerate(REASON_NAMES.tolist()))
_CORE = [*REQUEST_FIELDS, *CANDIDATE_COLUMNS, "propensity", "shown"]
DECISION_SCHEMA = pl.Schema({**{c: _LOG[c] for c in _CORE}, **DECISION_EXTRAS})
EVENT_TYPES = ("impression", "engagement", "conversion", "negative_feedback")
EVENT_SCHEMA = pl.Schema(
    {  # type: ignore[arg-type]
        "event_id": pl.String,
        "type": pl.Enum(EVENT_TYPES),
        "impression_id": pl.String,
        "ts": pl.Datetime("us", "UTC"),
        "user_id": pl.String,
        "household_id": pl.String,
        "device_id": pl.String,
        "touchpoint": _LOG["touchpoint"],
        "slot": _LOG["slot"],
        "ad_id": pl.String,
        "creative_id": pl.String,
        "campaign_id": pl.String,
        "advertiser_id": pl.String,
        "category": pl.String,
        "negative_kind": _LOG["negative_kind"],
        "worker": pl.String,
        "received_at": pl.Datetime("us", "UTC"),
    }
)


@dataclass(frozen=True)
class EventRecord:
    """One reported event, as the event log keeps it."""

    event_id: str
    type: str
    impression_id: str
    ts: datetime
    user_id: str
    household_id: str | None = None
    device_id: str | None = None
    touchpoint: str | None = None
    slot: str | None = None
    ad_id: str | None = None
    creative_id: str | None = None
    campaign_id: str | None = None
    advertiser_id: str | None = None
    category: str | None = None
    negative_kind: str | None = None


def event_id(kind: str, impression: str, negative_kind: str | None = None) -> str:
    """The default id of an event: its type and impression id (and the negative kind)."""
    return f"{kind}:{impression}" + (f":{negative_kind}" if negative_kind else "")


def decision_frame(
    requests: list[ScoreRequest], records: list[Record], worker: str
) -> pl.DataFrame:
    """The decision-log rows of spooled decisions (one per candidate), in ``DECISION_SCHEMA``:
    ``requests[i]`` is ``records[i]``'s request, decoded.

    Per-candidate values come as numpy arrays; per-request values are built once per request
    and spread over its rows by one gather (no Python string per row)."""
    inputs = assemble([r.context for r in requests], [r.candidates for r in requests])
    owner = pl.Series(
        np.repeat(np.arange(len(records), dtype=np.uint32), [len(r.ints) for r in records])
    )
    floats = np.vstack([r.floats for r in records])
    ints = np.vstack([r.ints for r in records])
    number = dict(zip(FLOATS, floats.T, strict=False))
    rank = ints[:, 0]
    propensity = number["propensity"]
    rows = pl.DataFrame(
        {
            "propensity": np.where(propensity > 0, propensity, np.nan),
            "shown": rank > 0,
            "reason": ints[:, 2].astype(np.uint8),
            "rank": rank,
            "current_rank": ints[:, 1],
            **{name: number[name] for name in ("p_engage", "p_negative", "expected_value")},
            **{f"cost_{c}": floats[:, len(FLOATS) + j] for j, c in enumerate(COST_COMPONENTS)},
            "cost_total": number["cost_total"],
            "utility": number["utility"],
        }
    ).with_columns(
        pl.col("propensity").fill_nan(None),
        pl.col("reason").replace_strict(_REASON_NAME, return_dtype=pl.String),
    )
    per_request = pl.DataFrame(
        {
            "reserved": [r.reserved for r in records],
            "selection_propensity": [r.selection_propensity for r in records],
            "no_ad_propensity": [r.no_ad_propensity for r in records],
            "exploration_variant": [r.variant for r in records],
            "exploration_share": [r.exploration_share for r in records],
            "cap_store_unavailable": [not r.cap_store_ok for r in records],
            "model_version": [r.model_version for r in records],
            "config_version": [r.config_version for r in records],
            "logged_at": [int(r.at * 1e6) for r in records],
        }
    )[owner]
    frame = pl.concat([inputs, rows, per_request], how="horizontal").with_columns(
        pl.col("reserved") & pl.col("shown"),
        worker=pl.lit(worker),
        impression_id=pl.when("shown").then(  # impression_id(request_id, ad_id)
            pl.concat_str("request_id", pl.lit(IMPRESSION_SEPARATOR), "ad_id")
        ),
    )
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in DECISION_SCHEMA.items()
    )


def event_frame(batches: list[tuple[list[EventRecord], float]], worker: str) -> pl.DataFrame:
    """The event-log rows of ``batches`` (events with the time they were received)."""
    rows = [(e, at) for events, at in batches for e in events]
    columns: dict[str, list[object]] = {
        name: [getattr(e, name) for e, _ in rows]
        for name in EVENT_SCHEMA.names()
        if name not in ("worker", "received_at")
    }
    columns["worker"] = [worker] * len(rows)
    columns["received_at"] = [datetime.fromtimestamp(at, UTC) for _, at in rows]
    return pl.DataFrame(columns, schema=EVENT_SCHEMA)


def arrow_schema(schema: pl.Schema) -> pa.Schema:
    return pl.DataFrame(schema=schema).to_arrow().schema


def check_version(kind: str, metadata: dict[bytes, bytes] | None, path: str) -> None:
    """Refuse a file that is not this version of ``kind``'s log, naming what it is.

    Raises:
        LogSchemaError: another kind, another version, or no admatch log at all.
    """
    found = (metadata or {}).get(META_KEY.encode(), b"").decode()
    if found != f"{kind}/{VERSION}":
        what = (
            f"version {found.split('/', 1)[1]}"
            if found.startswith(f"{kind}/")
            else (f"a {found} log" if found else "no admatch log")
        )
        raise LogSchemaError(
            path, f"is {what}: this admatch reads {kind} logs of version {VERSION}"
        )
