"""The AdMatching servicer: each method is admit -> decode -> core -> encode.

Decoding (``decode``) checks every size and value once, where a message enters; the core takes
the request as valid. Requests in flight and open streams are counted (``admission``) and
refused beyond their bounds; a ScoreStream answers a refused message with its own ``error`` and
goes on. Credentials are the auth interceptor's (``auth``), before any method runs.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import Admitted, App
from engine.batching import Job, Work
from engine.caps.plan import check_not_ahead
from engine.config import ServerConfig
from engine.deadline import Deadline
from engine.errors import DeadlineExceeded
from engine.rpc.admission import Admission
from engine.rpc.convert import decision_to_wire
from engine.rpc.decode import decode_events, decode_request
from engine.rpc.errors import code_name, parsed, status_of
from engine.rpc.limits import PATH_CHARS, Limits
from engine.rpc.metrics import Metrics
from engine.rpc.stream import Idle, read_ahead
from engine.scoring.types import Decision
from engine.timing import StageTimer

# Loads a model directory and/or config file into every worker of the server, all or nothing
# (``None``: the current directory, the current config); returns the workers now serving it.
Reloader = Callable[[Path | None, Path | None], list[str]]


def worker_name() -> str:
    """This process as ``ModelInfo`` names a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def local_reloader(app: App) -> Reloader:
    """The reload of a server of one process: this app is every worker."""

    def reload(model_dir: Path | None, config_path: Path | None) -> list[str]:
        app.reload(model_dir, config_path)
        return [worker_name()]

    return reload


class StreamIdle(DeadlineExceeded):
    """A ScoreStream had nothing in flight for ``server.stream_idle_timeout_s``."""


@dataclass(eq=False)
class _Pending:
    """A stream message admitted and queued (``job``), or refused already (``error``)."""

    request_id: str
    timer: StageTimer | None = None
    deadline: Deadline | None = None
    job: Job[bytes] | None = None
    error: BaseException | None = None


@dataclass
class _Stream:
    """One ScoreStream's messages in flight (admitted, not answered): when the stream ends
    with some unanswered (the client went away), their places in flight are given back."""

    admission: Admission
    in_flight: list[_Pending] = field(default_factory=list)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, pending: _Pending) -> None:
        """Count ``pending`` in flight (in the stream's reader thread).

        Raises:
            Overloaded: too many requests in flight; StreamIdle: the stream has ended.
        """
        with self.lock:
            if self.closed:
                raise StreamIdle("the stream has ended")
            self.admission.enter()
            self.in_flight.append(pending)

    def answered(self, pending: _Pending) -> None:
        """``pending`` is out of flight (answered, or failed)."""
        with self.lock:
            if pending in self.in_flight:
                self.in_flight.remove(pending)
                self.admission.leave()

    def close(self) -> None:
        """The stream ended: what is still in flight leaves it."""
        with self.lock:
            self.closed = True
            for _ in self.in_flight:
                self.admission.leave()
            self.in_flight.clear()


class AdMatchingServicer(pb_grpc.AdMatchingServicer):
    """Thin: all decisions happen in ``App`` and the scoring core."""

    def __init__(
        self,
        app: App,
        server: ServerConfig,
        metrics: Metrics,
        reloader: Reloader | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limits = Limits.from_config(server)
        self.admission = Admission(server.max_concurrent, server.max_streams)
        self.default_s = server.default_deadline_ms / 1000
        self.max_s = server.max_deadline_ms / 1000
        idle_s = server.stream_idle_timeout_s
        self.idle = Idle(
            idle_s,
            lambda: StreamIdle(
                f"stream idle for {idle_s:g} s with nothing in flight "
                "(server.stream_idle_timeout_s): ended; open a new one when you have requests"
            ),
        )
        self.reloader = reloader or local_reloader(app)

    def _deadline(self, context: grpc.ServicerContext) -> Deadline:
        """The client's deadline, cut to the maximum; the default when it sent none."""
        remaining = context.time_remaining()
        return Deadline(self.default_s if remaining is None else min(remaining, self.max_s))

    def Score(  # type: ignore[override]  # the serialized response (``server.PassBytes``)
        self, request: pb.ScoreRequest, context: grpc.ServicerContext
    ) -> bytes:
        with self.admission.request():
            timer, deadline = self.metrics.timer(), self._deadline(context)
            return self.app.run(self._work(request, timer, deadline), timer, deadline)

    def _work(self, message: pb.ScoreRequest, timer: StageTimer, deadline: Deadline) -> Work[bytes]:
        """A Score message's part of a pass: decode (validated once, here) -> the core ->
        encode."""

        def admit() -> Admitted:
            with timer.stage("decode"):
                request = decode_request(message, self.limits)
            dry = message.explain
            reserve = message.reserve_caps and not dry
            if reserve:  # its impressions are recorded at the request's time
                check_not_ahead(request.context.ts, datetime.now(UTC), self.app.max_ahead_s, "time")
            log = not dry and self.app.logs is not None
            wire = message.SerializeToString() if log else None  # the log keeps the request
            return Admitted(request, reserve, log, wire)

        def encode(decision: Decision) -> bytes:
            with timer.stage("encode"):
                reply = decision_to_wire(decision)
            self.metrics.decision(decision)
            return reply

        return self.app.work(admit, encode, timer, deadline)

    def ScoreStream(  # type: ignore[override]  # serialized responses, as ``Score``
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Answers in order, each message on its own: a refused one gets a response with its
        ``error``. Messages are admitted and queued for the next pass as they are read, up to
        ``batch_max`` ahead of the answers, so that a client sending several before reading
        has them decided in one pass."""
        with self.admission.stream():
            stream = _Stream(self.admission)

            def start(message: pb.ScoreRequest) -> _Pending:
                return self._start(message, context, stream)

            depth = max(self.app.batch_max, 1)
            try:
                for pending in read_ahead(request_iterator, start, depth, self.idle):
                    yield self._answer(pending, stream)
            finally:
                stream.close()

    def _start(
        self, message: pb.ScoreRequest, context: grpc.ServicerContext, stream: _Stream
    ) -> _Pending:
        """Admit and queue one stream message (in the stream's reader thread)."""
        try:
            message = parsed(message)
            pending = _Pending(message.request_id)
            stream.admit(pending)
        except Exception as exc:  # answered in order as this message's error
            return _Pending(getattr(message, "request_id", ""), error=exc)
        pending.timer, pending.deadline = self.metrics.timer(), self._deadline(context)
        pending.job = self.app.submit(self._work(message, pending.timer, pending.deadline))
        return pending

    def _answer(self, pending: _Pending, stream: _Stream) -> bytes:
        """The response to one stream message: its decision, or its error."""
        error = pending.error
        if error is None:
            assert pending.job is not None and pending.timer is not None
            assert pending.deadline is not None
            try:
                reply = self.app.wait(pending.job, pending.timer, pending.deadline)
            except Exception as exc:
                error = exc
            finally:
                stream.answered(pending)
        self.metrics.request("ScoreStream", "OK" if error is None else code_name(error))
        if error is None:
            return reply
        request_id = pending.request_id
        if len(request_id) > self.limits.string_chars:
            request_id = ""  # not echoed: the error says it is too long
        response = pb.ScoreResponse(request_id=request_id, error=status_of(error, "ScoreStream"))
        return response.SerializeToString()

    def RecordEvents(
        self, request: pb.EventBatch, context: grpc.ServicerContext
    ) -> pb.RecordEventsResponse:
        with self.admission.request():
            now = datetime.now(UTC)
            decoded = decode_events(request, now, self.app.max_ahead_s, self.limits)
            done = self.app.record(*decoded)
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
        self.limits.text("model_dir", request.model_dir, PATH_CHARS)
        self.limits.text("config_path", request.config_path, PATH_CHARS)
        model_dir = Path(request.model_dir) if request.model_dir else None
        config = Path(request.config_path) if request.config_path else None
        workers = self.reloader(model_dir, config)
        info = publish_serving(self.app, self.metrics)
        info.workers.extend(workers)
        return info


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
        served_by=worker_name(),
        metrics={
            f"{t}.{k}": float(v)
            for t, m in meta.get("metrics", {}).items()
            for k, v in m.items()
            if isinstance(v, int | float)
        },
    )
    if "created_at" in meta:
        info.trained_at.FromDatetime(datetime.fromisoformat(meta["created_at"]))
    return info
