"""The service's own logs: every Score decision and every reported event, as Parquet, beside
each other (docs/loop.md). ``admatch logs join`` turns them into the ad-opportunity log.

A decision log file is itself an ad-opportunity log (docs/log-schema.md): one row per
(request, candidate) with the request and candidate columns, ``shown`` (the service selected it)
and ``propensity`` (the probability it had: null where 0), no outcome yet, then the decision's
own columns (``DECISION_EXTRAS``). An event log file has one row per reported event
(``EVENT_SCHEMA``). Each file names its kind and version in its Parquet metadata
(``admatch.log``: ``decisions/1``, ``events/1``); readers refuse another version by name.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa

from engine.config import COST_COMPONENTS, DecisionLogConfig
from engine.errors import LogSchemaError
from engine.logs.stream import LogStream, StreamSettings
from engine.scoring.selection import CODE
from engine.scoring.types import IMPRESSION_SEPARATOR, Decision, ScoreRequest
from features.online import CANDIDATE_COLUMNS, REQUEST_FIELDS, assemble
from features.schema import polars_schema

VERSION = "1"
META_KEY = "admatch.log"
DECISIONS, EVENTS = "decisions", "events"
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
_REASON_NAME = {code: str(reason) for reason, code in CODE.items()}
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


@dataclass(frozen=True)
class Logged:
    """A request's decision as the decision log takes it (``at``: when it was decided)."""

    request: ScoreRequest
    decision: Decision
    reserved: bool
    at: float


def decision_frame(items: list[Logged], worker: str) -> pl.DataFrame:
    """The decision-log rows of ``items`` (one per candidate), in ``DECISION_SCHEMA``.

    Per-candidate values come as numpy arrays; per-request values are built once per request
    and spread over its rows by one gather (no Python string per row)."""
    inputs = assemble([i.request.context for i in items], [i.request.candidates for i in items])
    decisions = [i.decision for i in items]
    owner = pl.Series(
        np.repeat(np.arange(len(items), dtype=np.uint32), [len(d.ad_id) for d in decisions])
    )
    rank = np.concatenate([d.rank for d in decisions]).astype(np.int16)
    propensity = np.concatenate([d.propensity for d in decisions])
    costs = np.vstack([d.costs for d in decisions])
    codes = np.fromiter((CODE[r] for d in decisions for r in d.reason), np.uint8, len(owner))
    rows = pl.DataFrame(
        {
            "propensity": np.where(propensity > 0, propensity, np.nan),
            "shown": rank > 0,
            "reason": codes,
            "rank": rank,
            "current_rank": np.concatenate([d.current_rank for d in decisions]).astype(np.int16),
            "p_engage": np.concatenate([d.p_engage for d in decisions]),
            "p_negative": np.concatenate([d.p_negative for d in decisions]),
            "expected_value": np.concatenate([d.expected_value for d in decisions]),
            **{f"cost_{c}": costs[:, j] for j, c in enumerate(COST_COMPONENTS)},
            "cost_total": np.concatenate([d.cost for d in decisions]),
            "utility": np.concatenate([d.utility for d in decisions]),
        }
    ).with_columns(
        pl.col("propensity").fill_nan(None),
        pl.col("reason").replace_strict(_REASON_NAME, return_dtype=pl.String),
    )
    per_request = pl.DataFrame(
        {
            "reserved": [i.reserved for i in items],
            "selection_propensity": [d.selection_propensity for d in decisions],
            "no_ad_propensity": [d.no_ad_propensity for d in decisions],
            "exploration_variant": [d.variant for d in decisions],
            "exploration_share": [d.exploration_share for d in decisions],
            "cap_store_unavailable": [not d.cap_store_ok for d in decisions],
            "model_version": [d.model_version for d in decisions],
            "config_version": [d.config_version for d in decisions],
            "logged_at": [int(i.at * 1e6) for i in items],
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


def _arrow(schema: pl.Schema) -> pa.Schema:
    return pl.DataFrame(schema=schema).to_arrow().schema


class ServingLogs:
    """A worker's decision and event streams (config ``[decision_log]``)."""

    def __init__(self, config: DecisionLogConfig) -> None:
        settings = StreamSettings(
            directory=config.dir,
            rotate_s=config.rotate_s,
            rotate_bytes=int(config.rotate_mb * 1024**2),
            queue_items=config.queue,
            retention_days=config.retention_days,
            retention_bytes=int(config.retention_gb * 1024**3),
        )
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.decisions: LogStream[Logged] = LogStream(
            DECISIONS,
            _arrow(DECISION_SCHEMA),
            lambda items: decision_frame(items, self.worker),
            settings,
            {META_KEY: f"{DECISIONS}/{VERSION}"},
        )
        self.events: LogStream[tuple[list[EventRecord], float]] = LogStream(
            EVENTS,
            _arrow(EVENT_SCHEMA),
            lambda items: event_frame(items, self.worker),
            settings,
            {META_KEY: f"{EVENTS}/{VERSION}"},
        )

    def decision(self, request: ScoreRequest, decision: Decision, reserved: bool) -> None:
        """Log one request's decision (never blocks; dropped and counted when behind)."""
        self.decisions.put(Logged(request, decision, reserved, time.time()))

    def record(self, events: list[EventRecord]) -> None:
        """Log reported events (never blocks)."""
        if events:
            self.events.put((events, time.time()))

    @property
    def healthy(self) -> bool:
        """Both streams' last writes succeeded."""
        return self.decisions.stats.healthy and self.events.stats.healthy

    def close(self) -> None:
        """Write what is queued and finalise the open files."""
        self.decisions.close()
        self.events.close()


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
