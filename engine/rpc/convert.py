"""Wire conversion of what the server answers and what clients send.

The server's side: a ``Decision`` to the bytes of a ``ScoreResponse`` (``decision_to_wire``).
Clients' side (the CLI, the replay harness, tests): requests and event batches to messages,
responses back to ``Decision``. Decoding what clients send is ``decode``'s. Enum tables are
``enums``'. The core never imports generated code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from admatch.v1 import admatch_pb2 as pb
from engine.caps.rules import CONVERSION
from engine.caps.store import Feedback, Impression
from engine.config import COST_COMPONENTS
from engine.rpc.enums import NUMBER, REASON, REASON_OF, WIRE_REASON
from engine.rpc.wire import score_response
from engine.scoring.types import CODE, Decision, ScoreRequest, attribute_numbers, impression_id

_TEXT = ("ad_id", "creative_id", "campaign_id", "advertiser_id", "category", "advertiser_domain")


def request_to_proto(request: ScoreRequest, columnar: bool = False) -> pb.ScoreRequest:
    """The wire form of a request (for clients, tools and tests)."""
    ctx = request.context
    msg = pb.ScoreRequest(
        request_id=ctx.request_id,
        household_id=ctx.household_id or "",
        device_id=ctx.device_id or "",
        touchpoint=NUMBER["touchpoint"][ctx.touchpoint],
        slot=NUMBER["slot"][ctx.slot],
        scene=NUMBER["scene"].get(ctx.scene or "", 0),
        content_rating=NUMBER["rating"].get(ctx.content_rating or "", 0),
        audience=NUMBER["audience"].get(ctx.audience or "", 0),
        assistant_state=NUMBER["assistant_state"].get(ctx.assistant_state or "", 0),
        blocked_categories=list(ctx.blocked_categories),
        blocked_advertisers=list(ctx.blocked_advertisers),
        blocked_attributes=attribute_numbers(ctx.blocked_attributes),
        content_categories=list(ctx.content_categories),
        user=pb.UserProfile(
            user_id=ctx.user_id,
            interests=list(ctx.user_interests),
            age_band=NUMBER["age_band"].get(ctx.age_band or "", 0),
            activity_level=NUMBER["activity"].get(ctx.activity_level or "", 0),
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
        "format": [NUMBER["format"][v] for v in col("format", "")],
        "pricing": [NUMBER["pricing"][v] for v in col("pricing", "")],
        "suitability_tier": [NUMBER["rating"].get(v, 0) for v in col("suitability_tier", "")],
    }
    fields = {name: col(name, "") for name in _TEXT}
    fields.update(numbers, duration_s=col("duration_s", 0.0), bid=col("bid", 0.0))
    fields["creative_attributes"] = [int(v) for v in col("creative_attributes", 0)]
    excluded = [list(v) for v in col("excluded_content", ())]
    if columnar:
        lists = [pb.StringList(values=v) for v in excluded] if any(excluded) else []
        msg.candidate_columns.CopyFrom(pb.CandidateColumns(**fields, excluded_content=lists))
    else:
        msg.candidates.items.extend(
            pb.Candidate(**{k: v[i] for k, v in fields.items()}, excluded_content=excluded[i])
            for i in range(n)
        )
    for campaign, rules in (request.campaign_caps or {}).items():
        for rule in rules:
            msg.campaign_caps.append(
                pb.CampaignCap(
                    campaign_id=campaign,
                    scope=NUMBER["scope"][rule.scope],
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
        WIRE_REASON[d.reason_code],
        d.rank,
        (d.p_engage, d.p_negative, d.expected_value, d.cost, d.utility),
        d.costs,
        (d.model_version, d.config_version),
        _propensity(d),
        (d.selection_propensity, d.no_ad_propensity, d.variant),
        not d.cap_store_ok,
    )


def _propensity(d: Decision) -> np.ndarray:
    """The decision's propensities (a decision built without them: 0 each)."""
    return d.propensity if len(d.propensity) == len(d.ad_id) else np.zeros(len(d.ad_id))


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
        cap_store_unavailable=not decision.cap_store_ok,
        selection_propensity=decision.selection_propensity,
        no_ad_propensity=decision.no_ad_propensity,
        exploration_variant=decision.variant,
        impression_ids=[impression_id(decision.request_id, a) for a in decision.selected],
    )
    propensity = _propensity(decision)
    reasons = decision.reason
    for i, ad in enumerate(decision.ad_id):
        cost = pb.CostParts(
            **{c: float(decision.costs[i, j]) for j, c in enumerate(COST_COMPONENTS)}
        )
        resp.decisions.append(
            pb.CandidateDecision(
                ad_id=ad,
                reason=REASON[reasons[i]],
                rank=int(decision.rank[i]),
                score=pb.ScoreParts(
                    p_engage=float(decision.p_engage[i]),
                    p_negative=float(decision.p_negative[i]),
                    expected_value=float(decision.expected_value[i]),
                    cost=cost,
                    cost_total=float(decision.cost[i]),
                    utility=float(decision.utility[i]),
                ),
                propensity=float(propensity[i]),
            )
        )
    return resp


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
        reason_code=np.array([CODE[REASON_OF[d.reason]] for d in msg.decisions], np.uint8),
        rank=np.array([d.rank for d in msg.decisions], dtype=np.int64),
        p_engage=column("p_engage"),
        p_negative=column("p_negative"),
        expected_value=column("expected_value"),
        costs=costs,
        cost=column("cost_total"),
        utility=column("utility"),
        model_version=msg.model_version,
        config_version=msg.config_version,
        cap_store_ok=not msg.cap_store_unavailable,
        propensity=np.array([d.propensity for d in msg.decisions], dtype=np.float64),
        selection_propensity=msg.selection_propensity,
        no_ad_propensity=msg.no_ad_propensity,
        variant=msg.exploration_variant,
    )


def events_to_proto(
    impressions: Sequence[Impression], feedback: Sequence[Feedback]
) -> pb.EventBatch:
    """The ``RecordEvents`` batch of impressions, negative feedback and conversions."""
    batch = pb.EventBatch()
    for imp in impressions:
        e = batch.events.add(
            type=pb.Event.TYPE_IMPRESSION,
            impression_id=imp.impression_id,
            user_id=imp.user_id,
            touchpoint=NUMBER["touchpoint"][imp.touchpoint],
            slot=NUMBER["slot"][imp.slot],
            ad_id=imp.ad_id,
            **{k: v or "" for k, v in imp.ids().items() if k not in ("user_id", "ad_id")},
        )
        e.time.FromDatetime(imp.ts)
    for f in feedback:
        converted = f.kind == CONVERSION
        e = batch.events.add(
            type=pb.Event.TYPE_CONVERSION if converted else pb.Event.TYPE_NEGATIVE_FEEDBACK,
            impression_id=f.impression_id,
            user_id=f.user_id,
            household_id=f.household_id or "",
            campaign_id=f.campaign_id or "",
            advertiser_id=f.advertiser_id or "",
            category=f.category or "",
            negative_kind=0 if converted else NUMBER["negative_kind"][f.kind],
        )
        e.time.FromDatetime(f.ts)
    return batch
