"""Wire conversion between the ``admatch.v1`` protobuf messages and the scoring core's types.

Only this module (and the servicer) imports generated code; the core never does. Enum names map
mechanically to the schema's vocabulary (``SLOT_OTT_BOOT`` <-> ``ott_boot``). Both candidate
encodings, a list of messages and one packed column per attribute, give the same
``ScoreRequest``. Bad input raises ``InvalidArgument`` naming the proto field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from admatch.v1 import admatch_pb2 as pb
from engine.caps.plan import check_time
from engine.caps.rules import CapRule
from engine.caps.store import Feedback, Impression
from engine.config import COST_COMPONENTS
from engine.errors import InvalidArgument
from engine.rpc.wire import score_response
from engine.scoring.types import Decision, PodLimits, Reason, ScoreRequest
from features.online import RequestContext


def _names(enum: Any, prefix: str) -> list[str | None]:
    """Schema value per enum number (None for UNSPECIFIED)."""
    out: list[str | None] = [None] * (max(enum.values()) + 1)
    for name, number in enum.items():
        if number:
            out[number] = name.removeprefix(prefix).lower()
    return out


TOUCHPOINT = _names(pb.Touchpoint, "TOUCHPOINT_")
SLOT = _names(pb.Slot, "SLOT_")
SCENE = _names(pb.Scene, "SCENE_")
FORMAT = _names(pb.Format, "FORMAT_")
PRICING = _names(pb.Pricing, "PRICING_")
RATING = _names(pb.Rating, "RATING_")
AGE_BAND = _names(pb.AgeBand, "AGE_BAND_")
ACTIVITY = _names(pb.ActivityLevel, "ACTIVITY_LEVEL_")
SCOPE = _names(pb.CapScope, "CAP_SCOPE_")
_REASON = {r: pb.Reason.Value(f"REASON_{r.value}") for r in Reason}
_NUMBER: dict[str, dict[str, Any]] = {
    name: {v: i for i, v in enumerate(table) if v is not None}
    for name, table in (
        ("touchpoint", TOUCHPOINT),
        ("slot", SLOT),
        ("scene", SCENE),
        ("format", FORMAT),
        ("pricing", PRICING),
        ("rating", RATING),
        ("age_band", AGE_BAND),
        ("activity", ACTIVITY),
        ("scope", SCOPE),
    )
}


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
        InvalidArgument: naming ``field``: seconds or nanos outside what a Timestamp allows
            (a client can send any), or a time outside ``plan.check_time``'s range.
    """
    try:
        value = ts.ToDatetime(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidArgument(field, f"not a valid timestamp: {exc}") from exc
    check_time(value, field)
    return value


def _context(msg: pb.ScoreRequest) -> RequestContext:
    if not msg.request_id:
        raise InvalidArgument("request_id", "required")
    if not msg.HasField("time"):
        raise InvalidArgument("time", "required")
    if not msg.user.user_id:
        raise InvalidArgument("user.user_id", "required")
    return RequestContext(
        request_id=msg.request_id,
        ts=timestamp(msg.time, "time"),
        user_id=msg.user.user_id,
        touchpoint=str(_enum(TOUCHPOINT, msg.touchpoint, "touchpoint", True)),
        slot=str(_enum(SLOT, msg.slot, "slot", True)),
        household_id=_opt(msg.household_id),
        device_id=_opt(msg.device_id),
        scene=_enum(SCENE, msg.scene, "scene", False),
        local_hour=msg.local_hour if msg.HasField("local_hour") else None,
        user_interests=tuple(msg.user.interests),
        age_band=_enum(AGE_BAND, msg.user.age_band, "user.age_band", False),
        activity_level=_enum(ACTIVITY, msg.user.activity_level, "user.activity_level", False),
        content_rating=_enum(RATING, msg.content_rating, "content_rating", False),
    )


_TEXT = ("ad_id", "creative_id", "campaign_id", "advertiser_id", "category")
_ATTRS = (*_TEXT, "format", "pricing", "suitability_tier", "duration_s", "bid")
_ENUM_TABLES = {
    "format": (FORMAT, True),
    "pricing": (PRICING, True),
    "suitability_tier": (RATING, False),
}
_REQUIRED = ("ad_id", "format", "pricing", "bid")


_ROWS, _COLUMNS = "candidates.items", "candidate_columns"  # the candidates' paths, by encoding


def _prefix(msg: pb.ScoreRequest) -> str:
    """The path of the candidates in the message's encoding."""
    return _COLUMNS if msg.WhichOneof("candidate_encoding") == _COLUMNS else _ROWS


def _at(prefix: str, name: str, i: int | str) -> str:
    """The path of candidate ``i``'s attribute ``name`` under ``prefix`` (:func:`_prefix`)."""
    return f"{prefix}.{name}[{i}]" if prefix == _COLUMNS else f"{prefix}[{i}].{name}"


def _enum_column(
    numbers: Sequence[int], table: list[str | None], prefix: str, name: str, required: bool
) -> list[str | None]:
    values, low = list(numbers), 1 if required else 0
    if values and (min(values) < low or max(values) >= len(table)):
        i = next(i for i, v in enumerate(values) if not low <= v < len(table))
        problem = "required" if values[i] == 0 else "unknown value"
        raise InvalidArgument(_at(prefix, name, i), problem)
    return list(map(table.__getitem__, values))


def _raw(msg: pb.ScoreRequest) -> tuple[dict[str, Sequence[Any]], str]:
    """The candidates' attributes as sequences, from either encoding, and the field prefix."""
    if msg.WhichOneof("candidate_encoding") is None:
        raise InvalidArgument("candidates", "required: candidates or candidate_columns")
    prefix = _prefix(msg)
    if prefix == _COLUMNS:
        c = msg.candidate_columns
        return {name: getattr(c, name) for name in _ATTRS}, prefix
    rows = [
        (
            c.ad_id,
            c.creative_id,
            c.campaign_id,
            c.advertiser_id,
            c.category,
            c.format,
            c.pricing,
            c.suitability_tier,
            c.duration_s,
            c.bid,
        )
        for c in msg.candidates.items
    ]  # one pass over the messages
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in _ATTRS]
    return dict(zip(_ATTRS, columns, strict=True)), prefix


def _columns(msg: pb.ScoreRequest) -> dict[str, Any]:
    """Candidate columns in the core's vocabulary; empty strings and a zero duration mean
    unknown; a column left empty in the columnar encoding is absent."""
    raw, prefix = _raw(msg)
    n = len(raw["ad_id"])
    out: dict[str, Any] = {}
    for name in _ATTRS:
        values = raw[name]
        if n and len(values) == 0:
            if name in _REQUIRED:
                raise InvalidArgument(f"{prefix}.{name}", "required")
            continue
        if len(values) != n:
            raise InvalidArgument(f"{prefix}.{name}", f"has {len(values)} values for {n} ads")
        if name in _ENUM_TABLES:
            table, required = _ENUM_TABLES[name]
            out[name] = _enum_column(values, table, prefix, name, required)
        elif name == "duration_s":
            out[name] = [v or None for v in values]
        elif name in ("ad_id", "bid"):
            out[name] = list(values)
        else:
            out[name] = [v or None for v in values]
    return out


def _campaign_caps(msg: pb.ScoreRequest) -> dict[str, list[CapRule]] | None:
    if not msg.campaign_caps:
        return None
    out: dict[str, list[CapRule]] = {}
    for i, cap in enumerate(msg.campaign_caps):
        field = f"campaign_caps[{i}]"
        scope = _enum(SCOPE, cap.scope, f"{field}.scope", True)
        try:
            rule = CapRule(
                scope=scope,
                target="campaign",
                window=cap.window,
                limit=cap.limit,
                campaign_id=cap.campaign_id,
            )
        except ValueError as exc:
            raise InvalidArgument(field, str(exc).splitlines()[-1]) from exc
        out.setdefault(cap.campaign_id, []).append(rule)
    return out


def request_from_proto(msg: pb.ScoreRequest) -> ScoreRequest:
    """A ``ScoreRequest`` of the scoring core from its wire form.

    Raises:
        InvalidArgument: naming the proto field that is missing or invalid.
    """
    pod = None
    if msg.HasField("pod"):
        if msg.pod.max_ads < 1:
            raise InvalidArgument("pod.max_ads", "must be >= 1")
        pod = PodLimits(msg.pod.max_ads, msg.pod.max_total_duration_s or None)
    return ScoreRequest(_context(msg), _columns(msg), None, pod, None, _campaign_caps(msg))


_CANDIDATE_AT = re.compile(r"request\.candidates\[(\d+)\]\.(\w+)")
_CANDIDATES_COLUMN = re.compile(r"request\.candidates\.(\w+)")


def wire_field(field: str, msg: pb.ScoreRequest) -> str:
    """A field named by ``ScoreRequest.validate`` (the core's names, ``request.candidates[3].bid``)
    as the message's own path: ``candidates.items[3].bid``, or ``candidate_columns.bid[3]``."""
    prefix = _prefix(msg)
    if at := _CANDIDATE_AT.fullmatch(field):
        return _at(prefix, at.group(2), at.group(1))
    if column := _CANDIDATES_COLUMN.fullmatch(field):
        return f"{prefix}.{column.group(1)}"
    return "time" if field == "request.ts" else field.removeprefix("request.")


def validate_request(request: ScoreRequest, msg: pb.ScoreRequest) -> None:
    """``ScoreRequest.validate`` of a request decoded from ``msg``, naming the message's own
    fields.

    Raises:
        InvalidArgument: naming the proto field that is invalid.
    """
    try:
        request.validate()
    except InvalidArgument as exc:
        raise InvalidArgument(wire_field(exc.field, msg), exc.problem) from exc


def request_to_proto(request: ScoreRequest, columnar: bool = False) -> pb.ScoreRequest:
    """The wire form of a request (for clients, tools and tests)."""
    ctx = request.context
    msg = pb.ScoreRequest(
        request_id=ctx.request_id,
        household_id=ctx.household_id or "",
        device_id=ctx.device_id or "",
        touchpoint=_NUMBER["touchpoint"][ctx.touchpoint],
        slot=_NUMBER["slot"][ctx.slot],
        scene=_NUMBER["scene"].get(ctx.scene or "", 0),
        content_rating=_NUMBER["rating"].get(ctx.content_rating or "", 0),
        user=pb.UserProfile(
            user_id=ctx.user_id,
            interests=list(ctx.user_interests),
            age_band=_NUMBER["age_band"].get(ctx.age_band or "", 0),
            activity_level=_NUMBER["activity"].get(ctx.activity_level or "", 0),
        ),
    )
    msg.time.FromDatetime(ctx.ts)
    if ctx.local_hour is not None:
        msg.local_hour = ctx.local_hour
    if request.pod is not None:
        msg.pod.max_ads = request.pod.max_ads
        msg.pod.max_total_duration_s = request.pod.max_total_duration_s or 0.0
    c = request.candidates
    n = len(c["ad_id"])

    def col(name: str, default: Any) -> list[Any]:
        values = c.get(name)
        return [default] * n if values is None else [default if v is None else v for v in values]

    numbers = {
        "format": [_NUMBER["format"][v] for v in col("format", "")],
        "pricing": [_NUMBER["pricing"][v] for v in col("pricing", "")],
        "suitability_tier": [_NUMBER["rating"].get(v, 0) for v in col("suitability_tier", "")],
    }
    fields = {name: col(name, "") for name in _TEXT}
    fields.update(numbers, duration_s=col("duration_s", 0.0), bid=col("bid", 0.0))
    if columnar:
        msg.candidate_columns.CopyFrom(pb.CandidateColumns(**fields))
    else:
        msg.candidates.items.extend(
            pb.Candidate(**{k: v[i] for k, v in fields.items()}) for i in range(n)
        )
    for campaign, rules in (request.campaign_caps or {}).items():
        for rule in rules:
            msg.campaign_caps.append(
                pb.CampaignCap(
                    campaign_id=campaign,
                    scope=_NUMBER["scope"][rule.scope],
                    window=rule.window,
                    limit=rule.limit,
                )
            )
    return msg


def _written(d: Decision) -> bytes | None:
    """The serialized response written column by column (``wire``), or ``None`` when a value
    needs the message path."""
    return score_response(
        d.request_id,
        d.selected,
        d.ad_id,
        np.array([_REASON[r] for r in d.reason], dtype=np.uint8),
        d.rank,
        (d.p_engage, d.p_negative, d.expected_value, d.cost, d.utility),
        d.costs,
        (d.model_version, d.config_version),
    )


def decision_to_wire(decision: Decision) -> bytes:
    """The serialized ``ScoreResponse`` of a decision: what the server sends (no message is
    built, parsed or serialized on the fast path)."""
    wire = _written(decision)
    return wire if wire is not None else decision_message(decision).SerializeToString()


def decision_to_proto(decision: Decision) -> pb.ScoreResponse:
    """The wire form of a decision: selected ads in order and every candidate's parts."""
    wire = _written(decision)
    return pb.ScoreResponse.FromString(wire) if wire is not None else decision_message(decision)


def decision_message(decision: Decision) -> pb.ScoreResponse:
    """``decision_to_proto`` built message by message (values the fast path cannot write)."""
    resp = pb.ScoreResponse(
        request_id=decision.request_id,
        selected_ad_ids=decision.selected,
        model_version=decision.model_version,
        config_version=decision.config_version,
    )
    for i, ad in enumerate(decision.ad_id):
        cost = pb.CostParts(
            **{c: float(decision.costs[i, j]) for j, c in enumerate(COST_COMPONENTS)}
        )
        resp.decisions.append(
            pb.CandidateDecision(
                ad_id=ad,
                reason=_REASON[decision.reason[i]],
                rank=int(decision.rank[i]),
                score=pb.ScoreParts(
                    p_engage=float(decision.p_engage[i]),
                    p_negative=float(decision.p_negative[i]),
                    expected_value=float(decision.expected_value[i]),
                    cost=cost,
                    cost_total=float(decision.cost[i]),
                    utility=float(decision.utility[i]),
                ),
            )
        )
    return resp


_REASON_OF = {number: reason for reason, number in _REASON.items()}


def decision_from_proto(msg: pb.ScoreResponse) -> Decision:
    """The core's ``Decision`` from its wire form (for clients: replay, tools, tests)."""
    parts = [d.score for d in msg.decisions]
    costs = np.array(
        [[getattr(p.cost, c) for c in COST_COMPONENTS] for p in parts], dtype=np.float64
    ).reshape(len(parts), len(COST_COMPONENTS))

    def column(name: str) -> np.ndarray:
        return np.array([getattr(p, name) for p in parts], dtype=np.float64)

    return Decision(
        request_id=msg.request_id,
        selected=list(msg.selected_ad_ids),
        ad_id=[d.ad_id for d in msg.decisions],
        reason=[_REASON_OF[d.reason] for d in msg.decisions],
        rank=np.array([d.rank for d in msg.decisions], dtype=np.int64),
        p_engage=column("p_engage"),
        p_negative=column("p_negative"),
        expected_value=column("expected_value"),
        costs=costs,
        cost=column("cost_total"),
        utility=column("utility"),
        model_version=msg.model_version,
        config_version=msg.config_version,
    )


_KIND_NUMBER = {
    k.removeprefix("NEGATIVE_KIND_").lower(): v for k, v in pb.Event.NegativeKind.items() if v
}


def events_to_proto(
    impressions: Sequence[Impression], feedback: Sequence[Feedback]
) -> pb.EventBatch:
    """The ``RecordEvents`` batch of impressions and negative feedback."""
    batch = pb.EventBatch()
    for imp in impressions:
        e = batch.events.add(
            type=pb.Event.TYPE_IMPRESSION,
            impression_id=imp.impression_id,
            user_id=imp.user_id,
            touchpoint=_NUMBER["touchpoint"][imp.touchpoint],
            slot=_NUMBER["slot"][imp.slot],
            ad_id=imp.ad_id,
            **{k: v or "" for k, v in imp.ids().items() if k not in ("user_id", "ad_id")},
        )
        e.time.FromDatetime(imp.ts)
    for f in feedback:
        e = batch.events.add(
            type=pb.Event.TYPE_NEGATIVE_FEEDBACK,
            impression_id=f.impression_id,
            user_id=f.user_id,
            household_id=f.household_id or "",
            campaign_id=f.campaign_id or "",
            advertiser_id=f.advertiser_id or "",
            negative_kind=_KIND_NUMBER[f.kind],
        )
        e.time.FromDatetime(f.ts)
    return batch
