"""``admatch logs join``: the service's decision and event logs -> the ad-opportunity log.

The decision log has a row per (request, candidate) with what the service decided and the
probability it had (``decisions.py``); the event log, what the ad server reported afterwards.
The join gives every decision row its outcome, by impression id (``request_id:ad_id``, what the
response gave the ad server for each selected ad and a reservation recorded):

* ``shown``: the service selected it and either reserved its impression (``reserve_caps``) or
  the ad server reported the impression.
* ``engaged``, ``converted``, ``negative`` (with ``negative_kind``, the first one reported):
  for shown rows, whether such an event came within its attribution window after the decision
  (``[decision_log]`` ``engaged_window`` 1h, ``converted_window`` 7d, ``negative_window`` 1h);
  null for rows not shown.

Nothing is dropped silently; the report counts, and ``<out>.not_used.parquet`` beside the
output keeps, every event that did not become an outcome: retries of an event already seen (by event
id), events for an impression id no decision has (orphans), events after their window (late)
or before the decision, outcomes of a row that was never shown, and impressions of ads the
service did not select. Decision rows logged twice (a retried request) are kept once.

The output is a valid ad-opportunity log (``features.logio.validate_log``): ``train``,
``replay``, ``tune`` and ``summary`` read it as it is, ``tune`` with its propensities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from engine.caps.rules import parse_duration
from engine.errors import InvalidArgument
from engine.logs.decisions import (
    DECISION_SCHEMA,
    DECISIONS,
    EVENT_SCHEMA,
    EVENTS,
    check_version,
)
from engine.logs.stream import finalised, open_directory
from features.logio import validate_log, write_log

OUTCOMES = {"engagement": "engaged", "conversion": "converted", "negative_feedback": "negative"}
_KEPT = (*EVENT_SCHEMA.names(), "why")  # the columns of the events not used


@dataclass(frozen=True)
class Windows:
    """How long after a decision each kind of outcome still counts, in seconds."""

    engaged_s: int = 3_600
    converted_s: int = 7 * 86_400
    negative_s: int = 3_600

    @classmethod
    def of(cls, engaged: str, converted: str, negative: str) -> Windows:
        """From durations like ``1h``, ``7d``."""
        return cls(parse_duration(engaged), parse_duration(converted), parse_duration(negative))

    def seconds(self, outcome: str) -> int:
        """The window of ``engaged``, ``converted`` or ``negative``."""
        return int(getattr(self, f"{outcome}_s"))


def read_logs(directory: str, kind: str, schema: pl.Schema) -> pl.DataFrame:
    """Every finalised file of ``kind`` in ``directory`` (a path or pyarrow URI), each checked
    for its version (an empty frame of ``schema`` when there is none).

    Raises:
        LogSchemaError: a file of another version.
        InvalidArgument: the directory cannot be listed.
    """
    fs, root = open_directory(directory)
    try:
        paths = [i.path for i in finalised(fs, root, kind)]
    except OSError as exc:
        raise InvalidArgument("--dir", f"cannot list {directory}: {exc}") from exc
    frames = []
    for path in paths:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
        check_version(kind, table.schema.metadata, path)
        frames.append(pl.DataFrame(table))
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="vertical_relaxed")


def join(
    decisions: pl.DataFrame, events: pl.DataFrame, windows: Windows
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The ad-opportunity log, the events that did not become outcomes (with why), and the
    counts (see the module doc)."""
    counts: dict[str, Any] = {"decision_rows_logged": decisions.height}
    decisions = decisions.unique(["request_id", "ad_id"], keep="first", maintain_order=True)
    counts["decision_rows_repeated"] = counts["decision_rows_logged"] - decisions.height
    counts["events_received"] = events.height
    events = events.with_row_index("_row")
    first = events.sort("received_at", "_row").unique("event_id", keep="first")
    repeated = events.join(first.select("_row"), on="_row", how="anti")
    selected = decisions.filter(pl.col("impression_id").is_not_null()).select(
        "impression_id", decision_ts=pl.col("ts"), reserved="reserved"
    )
    matched = first.join(selected, on="impression_id", how="left")
    delay = (pl.col("ts") - pl.col("decision_ts")).dt.total_microseconds() / 1e6
    window = (
        pl.col("type")
        .cast(pl.String)
        .replace_strict(
            {t: windows.seconds(o) for t, o in OUTCOMES.items()},
            default=None,
            return_dtype=pl.Int64,
        )
    )
    matched = matched.with_columns(
        why=pl.when(pl.col("decision_ts").is_null())
        .then(pl.lit("orphan: no decision selected this impression id"))
        .when(delay < -60)
        .then(pl.lit("before its decision"))
        .when((pl.col("type") != "impression") & (delay > window))
        .then(pl.lit("late: after its attribution window"))
    )
    impressions = matched.filter(pl.col("type") == "impression", pl.col("why").is_null())
    shown_ids = pl.concat(
        [
            impressions.select("impression_id"),
            selected.filter("reserved").select("impression_id"),
        ]
    ).unique()
    outcomes = matched.filter(pl.col("type") != "impression", pl.col("why").is_null())
    unshown = outcomes.join(shown_ids, on="impression_id", how="anti")
    outcomes = outcomes.join(shown_ids, on="impression_id", how="semi")
    per_row = _outcomes(outcomes)
    log = (
        decisions.drop("shown")
        .with_columns(
            shown=pl.col("impression_id")
            .is_in(shown_ids["impression_id"].implode())
            .fill_null(False)
        )
        .join(per_row, on="impression_id", how="left")
        .with_columns(
            [
                pl.when("shown").then(pl.col(c).fill_null(False)).alias(c)
                for c in ("engaged", "converted", "negative")
            ]
        )
    )
    dropped = pl.concat(
        [
            repeated.with_columns(why=pl.lit("repeated event id")).select(*_KEPT),
            matched.filter(pl.col("why").is_not_null()).select(*_KEPT),
            unshown.with_columns(why=pl.lit("outcome of a row not shown")).select(*_KEPT),
        ]
    )
    counts |= {
        "events_repeated": repeated.height,
        "events_by_type": dict(first.group_by("type").len().sort("type").iter_rows()),
        "events_not_used": dict(dropped.group_by("why").len().sort("why").iter_rows()),
        "requests": log["request_id"].n_unique(),
        "rows": log.height,
        "shown": int(log["shown"].sum()),
        "engaged": int(log["engaged"].sum() or 0),
        "converted": int(log["converted"].sum() or 0),
        "negative": int(log["negative"].sum() or 0),
    }
    return validate_log(log), dropped, counts


def _outcomes(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per impression id: engaged, converted, negative and the first negative kind."""
    return (
        outcomes.sort("ts")
        .group_by("impression_id")
        .agg(
            engaged=(pl.col("type") == "engagement").any(),
            converted=(pl.col("type") == "conversion").any(),
            negative=(pl.col("type") == "negative_feedback").any(),
            negative_kind=pl.col("negative_kind").drop_nulls().first(),
        )
    )


def join_logs(
    directory: str,
    out: Path,
    windows: Windows,
    events_dir: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Join the logs of ``directory`` (events from ``events_dir``, default the same) into the
    ad-opportunity log ``out``, the decisions taken in ``[since, until)`` only (events of any
    time); ``<out stem>.not_used.parquet`` (the events that did not become outcomes, with why)
    and ``<out stem>.join.json`` (the counts) beside it. Returns the counts.

    Raises:
        LogSchemaError: a log file of another version; InvalidArgument: no decisions.
    """
    decisions = read_logs(directory, DECISIONS, DECISION_SCHEMA)
    if since is not None:
        decisions = decisions.filter(pl.col("ts") >= since)
    if until is not None:
        decisions = decisions.filter(pl.col("ts") < until)
    if decisions.is_empty():
        raise InvalidArgument("--dir", f"no decisions logged in {directory} in that time")
    events = read_logs(events_dir or directory, EVENTS, EVENT_SCHEMA)
    log, dropped, counts = join(decisions, events, windows)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_log(log, out)
    dropped.write_parquet(out.with_name(f"{out.stem}.not_used.parquet"))
    report = {**counts, "out": str(out), "windows_s": windows.__dict__}
    out.with_name(f"{out.stem}.join.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
