"""Decoding what a client sends: the one place a wire message is checked and turned into the
core's types.

``decode_request`` takes a ``ScoreRequest`` message to a validated core ``ScoreRequest`` and
``decode_events`` an ``EventBatch`` to impressions and feedback. Both check the sizes first
(``limits``), then every value, and raise ``InvalidArgument`` naming the field as the message
spells it (``candidates.items[3].bid``, ``candidate_columns.bid[3]``, ``events[2].time``), the
value (cut) and the rule. Both candidate encodings, a list of messages and one packed column per
attribute, give the same request. The row encoding's candidates are read from their bytes by a
compiled reader (``_rows``) that makes the same checks; when it refuses a value, the checked
path below reads them again and names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from admatch.v1 import admatch_pb2 as pb
from engine.caps.plan import check_not_ahead, check_time
from engine.caps.rules import CONVERSION, MAX_WINDOW_S, CapRule, parse_duration
from engine.caps.store import Feedback, Impression
from engine.errors import InvalidArgument, shown
from engine.logs.decisions import EventRecord, event_id
from engine.rpc._rows import rows
from engine.rpc.enums import (
    ACTIVITY,
    AGE_BAND,
    ASSISTANT_STATE,
    AUDIENCE,
    FORMAT,
    NEGATIVE_KIND,
    PRICING,
    RATING,
    SCENE,
    SCOPE,
    SLOT,
    TOUCHPOINT,
)
from engine.rpc.limits import DEFAULT_LIMITS, WINDOW_CHARS, Limits
from engine.scoring.types import (
    RANGED,
    PodLimits,
    ScoreRequest,
    attribute_mask,
    check_ad_ids,
    check_pod,
    check_ranged,
)
from features.online import RequestContext
from features.schema import SLOT_TOUCHPOINT

MAX_CAP_LIMIT = 1_000_000
_NANOS = 1_000_000_000


def _enum(table: list[str | None], number: int, field: str, required: bool) -> str | None:
    value = table[number] if 0 <= number < len(table) else None
    if value is None and (required or number != 0):
        raise InvalidArgument(field, "required" if number == 0 else f"unknown value {number}")
    return value


def _opt(text: str) -> str | None:
    return text or None


def timestamp(ts: Timestamp, field: str) -> datetime:
    """A wire timestamp as a UTC datetime, within the times the cap store counts.

    Raises:
        InvalidArgument: naming ``field``: nanos outside [0, 999,999,999] (a client can send
            any), or a time outside ``plan.check_time``'s range.
    """
    if not 0 <= ts.nanos < _NANOS:
        raise InvalidArgument(f"{field}.nanos", f"must be 0 to 999,999,999, got {ts.nanos:,}")
    try:
        value = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        seconds = f"{ts.seconds:,} seconds after 1970-01-01"
        raise InvalidArgument(field, f"{seconds} is not a time a Timestamp can hold") from exc
    check_time(value, field)
    return value


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return value


def _context(msg: pb.ScoreRequest, limits: Limits) -> RequestContext:
    user = msg.user
    for name, value in (
        ("request_id", msg.request_id),
        ("user.user_id", user.user_id),
        ("household_id", msg.household_id),
        ("device_id", msg.device_id),
    ):
        limits.text(name, value)
    limits.entries("user.interests", user.interests, limits.interests, "max_interests")
    for name in ("blocked_categories", "blocked_advertisers", "content_categories"):
        limits.entries(name, getattr(msg, name), limits.blocked, "max_blocked")
    limits.count("blocked_attributes", len(msg.blocked_attributes), limits.blocked, "max_blocked")
    _required(msg.request_id, "request_id")
    if not msg.HasField("time"):
        raise InvalidArgument("time", "required")
    touchpoint = str(_enum(TOUCHPOINT, msg.touchpoint, "touchpoint", True))
    slot = str(_enum(SLOT, msg.slot, "slot", True))
    if SLOT_TOUCHPOINT[slot] != touchpoint:
        raise InvalidArgument("slot", f"{slot_name(msg.slot)} is not a slot of {touchpoint}")
    hour = msg.local_hour if msg.HasField("local_hour") else None
    if hour is not None and not 0 <= hour <= 23:
        raise InvalidArgument("local_hour", f"must be an hour 0-23, got {hour}")
    return RequestContext(
        request_id=msg.request_id,
        ts=timestamp(msg.time, "time"),
        user_id=_required(user.user_id, "user.user_id"),
        touchpoint=touchpoint,
        slot=slot,
        household_id=_opt(msg.household_id),
        device_id=_opt(msg.device_id),
        scene=_enum(SCENE, msg.scene, "scene", False),
        local_hour=hour,
        user_interests=tuple(user.interests),
        age_band=_enum(AGE_BAND, user.age_band, "user.age_band", False),
        activity_level=_enum(ACTIVITY, user.activity_level, "user.activity_level", False),
        content_rating=_enum(RATING, msg.content_rating, "content_rating", False),
        audience=_enum(AUDIENCE, msg.audience, "audience", False),
        assistant_state=_enum(ASSISTANT_STATE, msg.assistant_state, "assistant_state", False),
        blocked_categories=tuple(msg.blocked_categories),
        blocked_advertisers=tuple(msg.blocked_advertisers),
        content_categories=tuple(msg.content_categories),
        blocked_attributes=attribute_mask(list(msg.blocked_attributes), "blocked_attributes")
        or None,
    )


def slot_name(number: int) -> str:
    """A ``Slot`` number as the contract spells it (``SLOT_OTT_PAUSE``)."""
    return pb.Slot.Name(number) if number in pb.Slot.values() else str(number)  # type: ignore[arg-type]


_TEXT = ("ad_id", "creative_id", "campaign_id", "advertiser_id", "category", "advertiser_domain")
_ATTRS = (
    *_TEXT,
    "format",
    "pricing",
    "suitability_tier",
    "duration_s",
    "bid",
    "creative_attributes",
    "excluded_content",
)
_LISTS = ("excluded_content",)  # a list of strings per candidate
_ENUM_TABLES = {
    "format": (FORMAT, True),
    "pricing": (PRICING, True),
    "suitability_tier": (RATING, False),
}
_REQUIRED = ("ad_id", "format", "pricing", "bid")
_ROWS, _COLUMNS = "candidates.items", "candidate_columns"  # the candidates' paths, by encoding


class _Paths:
    """Field paths of the candidates in one message's encoding."""

    def __init__(self, msg: pb.ScoreRequest) -> None:
        columnar = msg.WhichOneof("candidate_encoding") == _COLUMNS
        self.prefix = _COLUMNS if columnar else _ROWS

    def at(self, name: str, i: int) -> str:
        """The path of candidate ``i``'s attribute ``name``."""
        if self.prefix == _COLUMNS:
            return f"{self.prefix}.{name}[{i}]"
        return f"{self.prefix}[{i}].{name}"

    def column(self, name: str) -> str:
        """The path of the attribute ``name`` of every candidate."""
        return f"{self.prefix}.{name}"


def _enum_column(
    numbers: Sequence[int], table: list[str | None], paths: _Paths, name: str, required: bool
) -> list[str | None]:
    values, low = list(numbers), 1 if required else 0
    if values and (min(values) < low or max(values) >= len(table)):
        i = next(i for i, v in enumerate(values) if not low <= v < len(table))
        problem = "required" if values[i] == 0 else f"unknown value {values[i]}"
        raise InvalidArgument(paths.at(name, i), problem)
    return list(map(table.__getitem__, values))


def _raw(msg: pb.ScoreRequest, paths: _Paths) -> dict[str, Sequence[Any]]:
    """The candidates' attributes as sequences, from either encoding."""
    if paths.prefix == _COLUMNS:
        c = msg.candidate_columns
        raw: dict[str, Sequence[Any]] = {name: getattr(c, name) for name in _ATTRS}
        for name in _LISTS:
            raw[name] = [entry.values for entry in raw[name]]
        return raw
    rows = [
        (
            c.ad_id,
            c.creative_id,
            c.campaign_id,
            c.advertiser_id,
            c.category,
            c.advertiser_domain,
            c.format,
            c.pricing,
            c.suitability_tier,
            c.duration_s,
            c.bid,
            c.creative_attributes,
            c.excluded_content,
        )
        for c in msg.candidates.items
    ]  # one pass over the messages
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in _ATTRS]
    return dict(zip(_ATTRS, columns, strict=True))


def _count(msg: pb.ScoreRequest, limits: Limits) -> int:
    """The number of candidates, within the limit (before anything is read of them)."""
    encoding = msg.WhichOneof("candidate_encoding")
    if encoding is None:
        raise InvalidArgument("candidates", "required: candidates or candidate_columns")
    field = f"{_ROWS}" if encoding == "candidates" else f"{_COLUMNS}.ad_id"
    n = len(msg.candidates.items if encoding == "candidates" else msg.candidate_columns.ad_id)
    limits.count(field, n, limits.candidates, "max_candidates")
    if n == 0:
        raise InvalidArgument(field, "empty: at least one candidate needed")
    return n


def _unknown_as_none(values: Sequence[Any], n: int) -> list[Any]:
    """A column with its unknown values (an empty string, a zero duration) as None: C-level
    passes for the common cases, every value known or none."""
    if not any(values):
        return [None] * n
    if all(values):
        return list(values)
    return [v or None for v in values]


# the ranges the compiled reader checks (a test pins them to ``RANGED``): duration up to its
# high, bid from its low, attribute sets up to their high
_ROW_RANGES = {c.name: c for c in RANGED}
_ROW_BOUNDS = (
    float(_ROW_RANGES["duration_s"].high),  # type: ignore[arg-type]
    float(_ROW_RANGES["bid"].low),  # type: ignore[arg-type]
    int(_ROW_RANGES["creative_attributes"].high),  # type: ignore[arg-type]
)


def _read_rows(msg: pb.ScoreRequest, limits: Limits) -> dict[str, Any] | None:
    """The row encoding's candidate columns as the compiled reader makes them from the
    candidates' bytes (every check of ``_checked_columns`` but duplicate ad ids), or ``None``
    when it refuses a value or cannot read the bytes."""
    return _read_row_bytes(msg.candidates.SerializeToString(), limits)


def _read_row_bytes(data: bytes, limits: Limits) -> dict[str, Any] | None:
    """``_read_rows`` of a serialized ``CandidateList``."""
    columns = rows(data, limits.string_chars, limits.blocked, FORMAT, PRICING, RATING, *_ROW_BOUNDS)
    if columns is None:
        return None
    return {
        name: values for name, values in zip(_ATTRS, columns, strict=True) if values is not None
    }


def _columns(msg: pb.ScoreRequest, limits: Limits) -> dict[str, Any]:
    """Candidate columns in the core's vocabulary, each value checked; empty strings and a zero
    duration mean unknown; a column left empty in the columnar encoding is absent."""
    n = _count(msg, limits)
    paths = _Paths(msg)
    if paths.prefix == _ROWS and (read := _read_rows(msg, limits)) is not None:
        check_ad_ids(read["ad_id"], paths.at)
        return read
    return _checked_columns(msg, limits, paths, n)


def _checked_columns(msg: pb.ScoreRequest, limits: Limits, paths: _Paths, n: int) -> dict[str, Any]:
    """``_columns`` value by value, through the message objects: what names a refused value."""
    raw = _raw(msg, paths)
    out: dict[str, Any] = {}
    for name in _ATTRS:
        values = raw[name]
        if len(values) == 0:
            if name in _REQUIRED:
                raise InvalidArgument(paths.column(name), "required")
            continue
        if len(values) != n:
            raise InvalidArgument(paths.column(name), f"has {len(values)} values for {n} ads")
        if name in _TEXT:
            values = list(values)  # a message's strings are made once, not once per pass
            limits.texts(values, lambda i, name=name: paths.at(name, i))  # type: ignore[misc]
        if name in _ENUM_TABLES:
            table, required = _ENUM_TABLES[name]
            out[name] = _enum_column(values, table, paths, name, required)
        elif name in ("ad_id", "bid"):
            out[name] = list(values)
        elif name in _LISTS:
            if not any(values):  # the common case: no candidate has an entry
                continue
            for i, entry in enumerate(values):
                limits.entries(paths.at(name, i), entry, limits.blocked, "max_blocked")
            out[name] = [list(v) or None for v in values]
        else:
            out[name] = _unknown_as_none(values, n)
    check_ad_ids(out["ad_id"], paths.at)
    check_ranged(out, paths.at)
    return out


def _window(cap: pb.CampaignCap, field: str) -> str:
    window = cap.window
    if len(window) > WINDOW_CHARS:
        raise InvalidArgument(field, f"{shown(window)}: at most {WINDOW_CHARS} characters")
    if window == "lifetime":
        return window
    try:
        seconds = parse_duration(window)
    except ValueError:
        rule = "a duration like 90m, 24h or 30d (at most 180d), or lifetime"
        raise InvalidArgument(field, f"{shown(window)} is not {rule}") from None
    if seconds > MAX_WINDOW_S:
        raise InvalidArgument(field, f"{shown(window)} is longer than 180d; use lifetime")
    return window


def _campaign_caps(msg: pb.ScoreRequest, limits: Limits) -> dict[str, list[CapRule]] | None:
    caps = msg.campaign_caps
    limits.count("campaign_caps", len(caps), limits.campaign_caps, "max_campaign_caps")
    if not caps:
        return None
    out: dict[str, list[CapRule]] = {}
    for i, cap in enumerate(caps):
        field = f"campaign_caps[{i}]"
        limits.text(f"{field}.campaign_id", cap.campaign_id)
        campaign = _required(cap.campaign_id, f"{field}.campaign_id")
        scope = _enum(SCOPE, cap.scope, f"{field}.scope", True)
        window = _window(cap, f"{field}.window")
        if not 1 <= cap.limit <= MAX_CAP_LIMIT:
            raise InvalidArgument(
                f"{field}.limit", f"must be 1 to {MAX_CAP_LIMIT:,}, got {cap.limit:,}"
            )
        rule = CapRule(
            scope=scope, target="campaign", window=window, limit=cap.limit, campaign_id=campaign
        )
        out.setdefault(campaign, []).append(rule)
    return out


def _pod(msg: pb.ScoreRequest) -> PodLimits | None:
    if not msg.HasField("pod"):
        return None
    pod = PodLimits(msg.pod.max_ads, msg.pod.max_total_duration_s or None)
    check_pod(pod, "pod")
    return pod


def decode_request(msg: pb.ScoreRequest, limits: Limits = DEFAULT_LIMITS) -> ScoreRequest:
    """The core's ``ScoreRequest`` of a wire message, every field checked (sizes first), so
    that the core may take it as valid (``ScoreRequest.validate`` would pass).

    Raises:
        InvalidArgument: naming the field as the message spells it.
    """
    context = _context(msg, limits)
    caps = _campaign_caps(msg, limits)
    return ScoreRequest(context, _columns(msg, limits), None, _pod(msg), None, caps)


def _event_ids(e: pb.Event, field: str, limits: Limits) -> None:
    for name in (
        "impression_id",
        "user_id",
        "household_id",
        "device_id",
        "ad_id",
        "creative_id",
        "campaign_id",
        "advertiser_id",
        "category",
    ):
        limits.text(f"{field}.{name}", getattr(e, name))


def _impression(e: pb.Event, ts: datetime, field: str) -> Impression:
    touchpoint = _enum(TOUCHPOINT, e.touchpoint, f"{field}.touchpoint", True)
    slot = _enum(SLOT, e.slot, f"{field}.slot", True)
    if SLOT_TOUCHPOINT[str(slot)] != touchpoint:
        raise InvalidArgument(f"{field}.slot", f"{slot_name(e.slot)} is not a slot of {touchpoint}")
    return Impression(
        e.impression_id,
        ts,
        e.user_id,
        str(touchpoint),
        str(slot),
        _required(e.ad_id, f"{field}.ad_id"),
        e.household_id or None,
        e.device_id or None,
        e.creative_id or None,
        e.campaign_id or None,
        e.advertiser_id or None,
        e.category or None,
    )


def _feedback(e: pb.Event, ts: datetime, kind: str) -> Feedback:
    """What a block rule may act on: a negative feedback (of ``kind``) or a conversion."""
    return Feedback(
        e.impression_id,
        ts,
        kind,
        e.user_id,
        e.household_id or None,
        e.campaign_id or None,
        e.advertiser_id or None,
        e.category or None,
    )


def decode_events(
    batch: pb.EventBatch, now: datetime, max_ahead_s: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Impression], list[Feedback], list[EventRecord]]:
    """Impressions, and negative feedback and conversions (what the blocks act on), of a batch:
    what the caps need; and every event as the event log keeps it (engagements too).

    Raises:
        InvalidArgument: naming ``events[i].field``; also for an event timed more than
            ``max_ahead_s`` after ``now`` (``plan.check_not_ahead``) and an impression whose
            slot is not of its touchpoint (as Score refuses it). Nothing of a refused batch
            is recorded.
    """
    limits.count("events", len(batch.events), limits.events, "max_events")
    impressions, feedback, records = [], [], []
    for i, e in enumerate(batch.events):
        field = f"events[{i}]"
        _event_ids(e, field, limits)
        kind = _enum([None, *pb.Event.Type.keys()[1:]], e.type, f"{field}.type", True)
        _required(e.impression_id, f"{field}.impression_id")
        _required(e.user_id, f"{field}.user_id")
        if not e.HasField("time"):
            raise InvalidArgument(f"{field}.time", "required")
        ts = timestamp(e.time, f"{field}.time")
        check_not_ahead(ts, now, max_ahead_s, f"{field}.time")
        negative = None
        if kind == "TYPE_IMPRESSION":
            impressions.append(_impression(e, ts, field))
        elif kind == "TYPE_NEGATIVE_FEEDBACK":
            negative = str(_enum(NEGATIVE_KIND, e.negative_kind, f"{field}.negative_kind", True))
            feedback.append(_feedback(e, ts, negative))
        elif kind == "TYPE_CONVERSION":
            feedback.append(_feedback(e, ts, CONVERSION))
        records.append(_record(e, str(kind), ts, negative, field, limits))
    return impressions, feedback, records


def _record(
    e: pb.Event, kind: str, ts: datetime, negative: str | None, field: str, limits: Limits
) -> EventRecord:
    """The event as the event log keeps it (its own id, or type:impression_id[:kind])."""
    limits.text(f"{field}.event_id", e.event_id)
    name = kind.removeprefix("TYPE_").lower()
    touchpoint = TOUCHPOINT[e.touchpoint] if 0 <= e.touchpoint < len(TOUCHPOINT) else None
    slot = SLOT[e.slot] if 0 <= e.slot < len(SLOT) else None
    return EventRecord(
        e.event_id or event_id(name, e.impression_id, negative),
        name,
        e.impression_id,
        ts,
        e.user_id,
        e.household_id or None,
        e.device_id or None,
        touchpoint,
        slot if touchpoint is not None and SLOT_TOUCHPOINT.get(str(slot)) == touchpoint else None,
        e.ad_id or None,
        e.creative_id or None,
        e.campaign_id or None,
        e.advertiser_id or None,
        e.category or None,
        negative,
    )
