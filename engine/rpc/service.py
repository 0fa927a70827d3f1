"""The AdMatching servicer: each method is validate -> from_proto -> core -> to_proto."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App, Decide
from engine.batching import Job, Prepared
from engine.caps.plan import check_not_ahead
from engine.caps.store import Feedback, Impression
from engine.deadline import Deadline
from engine.errors import InvalidArgument
from engine.rpc.auth import check_operator
from engine.rpc.convert import (
    SLOT,
    TOUCHPOINT,
    decision_to_wire,
    request_from_proto,
    timestamp,
    validate_request,
)
from engine.rpc.metrics import Metrics
from engine.rpc.stream import read_ahead
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import StageTimer

_KIND = {v: k.removeprefix("NEGATIVE_KIND_").lower() for k, v in pb.Event.NegativeKind.items()}


class _ScoreCall:
    """One Score request as batchable work: decode before the pass, encode after it."""

    def __init__(
        self,
        servicer: AdMatchingServicer,
        message: pb.ScoreRequest,
        timer: StageTimer,
        deadline: Deadline,
    ) -> None:
        self.servicer, self.message, self.timer, self.deadline = servicer, message, timer, deadline
        self.decide: Decide | None = None

    def prepare(self) -> Prepared:
        request = self.servicer._decode(self.message, self.timer)
        reserve = self.message.reserve_caps and not self.message.explain
        if reserve:  # its impressions are recorded at the request's time
            check_not_ahead(
                request.context.ts, datetime.now(UTC), self.servicer.app.max_ahead_s, "time"
            )
        self.decide = Decide(self.servicer.app, request, reserve, self.deadline, validated=True)
        return self.decide.prepare()

    def complete(self, decision: Decision) -> bytes:
        assert self.decide is not None
        return self.servicer._encode(self.decide.complete(decision), self.timer)


class AdMatchingServicer(pb_grpc.AdMatchingServicer):
    """Thin: all decisions happen in ``App`` and the scoring core."""

    def __init__(
        self,
        app: App,
        max_candidates: int,
        metrics: Metrics,
        operator_token: str = "",
        deadline_ms: tuple[float, float] = (1000.0, 10000.0),
    ) -> None:
        self.app = app
        self.max_candidates = max_candidates
        self.metrics = metrics
        self.operator_token = operator_token
        self.default_s, self.max_s = deadline_ms[0] / 1000, deadline_ms[1] / 1000

    def _deadline(self, context: grpc.ServicerContext) -> Deadline:
        """The client's deadline, cut to the maximum; the default when it sent none."""
        remaining = context.time_remaining()
        return Deadline(self.default_s if remaining is None else min(remaining, self.max_s))

    def Score(  # type: ignore[override]  # the serialized response (``server.PassBytes``)
        self, request: pb.ScoreRequest, context: grpc.ServicerContext
    ) -> bytes:
        call = _ScoreCall(self, request, self.metrics.timer(), self._deadline(context))
        return self.app.run(call, call.timer, call.deadline)

    def ScoreStream(  # type: ignore[override]  # serialized responses, as ``Score``
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Answers in order. With batching on, messages are queued for the next pass up to
        ``batch_max`` ahead of the answers, so that a client sending several before reading
        has them decided in one pass."""
        if self.app.batch_max <= 1:
            for request in request_iterator:
                yield self.Score(request, context)
            return

        def submit(request: pb.ScoreRequest) -> tuple[_ScoreCall, Job[bytes]]:
            call = _ScoreCall(self, request, self.metrics.timer(), self._deadline(context))
            return call, self.app.submit(call)

        for call, job in read_ahead(request_iterator, submit, self.app.batch_max):
            yield self.app.wait(job, call.timer, call.deadline)

    def _decode(self, request: pb.ScoreRequest, timer: StageTimer) -> ScoreRequest:
        with timer.stage("decode"):
            core_request = request_from_proto(request)
            n = len(core_request.candidates["ad_id"])
            if n > self.max_candidates:
                raise InvalidArgument(
                    "candidates", f"{n} candidates, at most {self.max_candidates}"
                )
            validate_request(core_request, request)
        return core_request

    def _encode(self, decision: Decision, timer: StageTimer) -> bytes:
        """The serialized ``ScoreResponse``: it leaves as it is (``server.PassBytes``)."""
        with timer.stage("encode"):
            reply = decision_to_wire(decision)
        self.metrics.decision(decision)
        return reply

    def RecordEvents(
        self, request: pb.EventBatch, context: grpc.ServicerContext
    ) -> pb.RecordEventsResponse:
        impressions, feedback = events_from_proto(request, datetime.now(UTC), self.app.max_ahead_s)
        done = self.app.record(impressions, feedback)
        return pb.RecordEventsResponse(
            impressions_recorded=done.impressions_recorded,
            duplicates=done.duplicates,
            feedback_applied=done.feedback_applied,
        )

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        return model_info(self.app)

    def ReloadModel(
        self, request: pb.ReloadModelRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        check_operator(context, self.operator_token)
        model_dir = Path(request.model_dir) if request.model_dir else None
        config = Path(request.config_path) if request.config_path else None
        self.app.reload(model_dir, config)
        return publish_serving(self.app, self.metrics)


def publish_serving(app: App, metrics: Metrics) -> pb.ModelInfo:
    """Set the metrics' model-info gauge to what is serving now, and return it."""
    info = model_info(app)
    metrics.serving(info.model_version, info.config_version, info.runtime)
    return info


def model_info(app: App) -> pb.ModelInfo:
    """What is serving now."""
    bundle, config = app.scorer.model, app.scorer.config
    meta = bundle.metadata
    info = pb.ModelInfo(
        model_version=bundle.version,
        config_version=config.version,
        runtime=bundle.runtime,
        feature_count=len(bundle.core.names),
        served_by=f"{socket.gethostname()}:{os.getpid()}",
        metrics={
            f"{t}.{k}": float(v)
            for t, m in meta.get("metrics", {}).items()
            for k, v in m.items()
            if isinstance(v, int | float)
        },
    )
    if "created_at" in meta:
        from datetime import datetime

        info.trained_at.FromDatetime(datetime.fromisoformat(meta["created_at"]))
    return info


def events_from_proto(
    batch: pb.EventBatch, now: datetime, max_ahead_s: int
) -> tuple[list[Impression], list[Feedback]]:
    """Impressions and negative feedback of a batch (engagements and conversions are
    accepted and counted by the caller's logs; caps need only impressions and feedback).

    Raises:
        InvalidArgument: naming ``events[i].field``; also for an event timed more than
            ``max_ahead_s`` after ``now`` (``plan.check_not_ahead``). Nothing of a refused
            batch is recorded.
    """
    impressions, feedback = [], []
    for i, e in enumerate(batch.events):
        field = f"events[{i}]"
        if not e.impression_id:
            raise InvalidArgument(f"{field}.impression_id", "required")
        if not e.HasField("time"):
            raise InvalidArgument(f"{field}.time", "required")
        if not e.user_id:
            raise InvalidArgument(f"{field}.user_id", "required")
        ts = timestamp(e.time, f"{field}.time")
        check_not_ahead(ts, now, max_ahead_s, f"{field}.time")
        if e.type == pb.Event.TYPE_IMPRESSION:
            touchpoint = TOUCHPOINT[e.touchpoint] if 0 <= e.touchpoint < len(TOUCHPOINT) else None
            slot = SLOT[e.slot] if 0 <= e.slot < len(SLOT) else None
            if touchpoint is None or slot is None or not e.ad_id:
                raise InvalidArgument(field, "an impression needs touchpoint, slot and ad_id")
            impressions.append(
                Impression(
                    e.impression_id,
                    ts,
                    e.user_id,
                    touchpoint,
                    slot,
                    e.ad_id,
                    e.household_id or None,
                    e.device_id or None,
                    e.creative_id or None,
                    e.campaign_id or None,
                    e.advertiser_id or None,
                    e.category or None,
                )
            )
        elif e.type == pb.Event.TYPE_NEGATIVE_FEEDBACK:
            kind = _KIND.get(e.negative_kind)
            if not kind or kind == "unspecified":
                raise InvalidArgument(f"{field}.negative_kind", "required for negative feedback")
            feedback.append(
                Feedback(
                    e.impression_id,
                    ts,
                    kind,
                    e.user_id,
                    e.household_id or None,
                    e.campaign_id or None,
                    e.advertiser_id or None,
                )
            )
        elif e.type == pb.Event.TYPE_UNSPECIFIED:
            raise InvalidArgument(f"{field}.type", "required")
    return impressions, feedback


def describe(info: pb.ModelInfo) -> str:
    """Model info as JSON text (for logs and the CLI)."""
    return json.dumps(
        {
            "model_version": info.model_version,
            "config_version": info.config_version,
            "runtime": info.runtime,
        }
    )
