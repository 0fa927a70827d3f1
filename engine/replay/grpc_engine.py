"""A running admatch server as a replay engine, over gRPC.

``concurrency`` worker threads keep that many requests in flight, taking requests in log order
(closed loop: each sends its next request as soon as its last one is answered). With ``rate``
the arrivals are open loop instead: request ``k`` of the replay is due at ``k / rate`` seconds
after the start whether or not earlier ones were answered, and its latency counts from when it
was due, so a server that falls behind shows it in the latency (no coordinated omission).
``stream`` sends over one ``ScoreStream`` per worker instead of unary calls; ``reserve`` asks
the server to reserve the selected ads' caps atomically (``reserve_caps``). After each answer
the worker records the request's events with ``RecordEvents``, as an ad server would. A request
is not sent while an earlier one of the same user, household or device is still in flight
(in real time the second comes after the first's ad was shown; see
``engine.replay.causal.causal_batches``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.replay.causal import previous_conflict
from engine.replay.engines import EventsOf, Result
from engine.rpc.convert import decision_from_proto, events_to_proto, request_to_proto
from engine.scoring.types import ScoreRequest

_Job = tuple[int, pb.ScoreRequest, float | None, threading.Event | None, threading.Event]


class _Stream:
    """One ``ScoreStream`` call used one request at a time by one worker thread."""

    def __init__(self, stub: pb_grpc.AdMatchingStub, timeout_s: float) -> None:
        self._requests: queue.SimpleQueue[pb.ScoreRequest | None] = queue.SimpleQueue()
        self._responses: Iterator[pb.ScoreResponse] = stub.ScoreStream(
            iter(self._requests.get, None), timeout=timeout_s
        )

    def call(self, msg: pb.ScoreRequest) -> pb.ScoreResponse:
        self._requests.put(msg)
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(None)


class GrpcEngine:
    """Sends requests to ``target`` (host:port) and records events there."""

    name = "grpc"

    def __init__(
        self,
        target: str,
        concurrency: int = 1,
        rate: float | None = None,
        stream: bool = False,
        reserve: bool = False,
        timeout_s: float = 10.0,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.target = target
        self.concurrency = max(1, concurrency)
        self.rate = rate
        self.stream = stream
        self.reserve = reserve
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.stub = pb_grpc.AdMatchingStub(self.channel)
        self.record_errors: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="replay")
        self._local = threading.local()
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._start: float | None = None
        self._sent = 0

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the channel connects (raises ``grpc.FutureTimeoutError``)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def model_info(self) -> pb.ModelInfo:
        """The server's ``GetModelInfo``."""
        info: pb.ModelInfo = self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self.timeout_s
        )
        return info

    def busy_seconds(self) -> float:
        """A remote engine's work is not visible here: 0."""
        return 0.0

    def decide(self, requests: Sequence[ScoreRequest], events_of: EventsOf) -> list[Result]:
        """See :class:`engine.replay.engines.ReplayEngine`."""
        results: list[Result | None] = [None] * len(requests)
        messages = [request_to_proto(r) for r in requests]
        for m in messages:
            m.reserve_caps = self.reserve
        if self._start is None:
            self._start = time.perf_counter()
        after = previous_conflict(requests)
        done = [threading.Event() for _ in requests]
        futures = []
        for i, msg in enumerate(messages):
            due = None
            if self.rate:
                due = self._start + self._sent / self.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            self._sent += 1
            wait_for = done[after[i]] if after[i] >= 0 else None
            job = (i, msg, due, wait_for, done[i])
            futures.append(self._pool.submit(self._one, job, events_of, results))
        wait(futures)
        for f in futures:
            f.result()  # a bug in a worker surfaces here
        return [r for r in results if r is not None]

    def _one(self, job: _Job, events_of: EventsOf, results: list[Result | None]) -> None:
        i, msg, due, wait_for, finished = job
        try:
            if wait_for is not None:  # the same user's previous request first
                wait_for.wait()
            self._send(i, msg, due, events_of, results)
        finally:
            finished.set()

    def _send(
        self,
        i: int,
        msg: pb.ScoreRequest,
        due: float | None,
        events_of: EventsOf,
        results: list[Result | None],
    ) -> None:
        start = due if due is not None else time.perf_counter()
        decision, error, message = None, None, None
        try:
            decision = decision_from_proto(self._call(msg))
        except grpc.RpcError as exc:
            error, message = exc.code().name, exc.details()
            self._local.stream = None  # a failed stream is over; the next call opens one
        results[i] = Result(decision, error, time.perf_counter() - start, message=message)
        impressions, feedback = events_of(i, decision)
        if impressions or feedback:
            try:
                self.stub.RecordEvents(
                    events_to_proto(impressions, feedback), timeout=self.timeout_s
                )
            except grpc.RpcError as exc:
                with self._lock:
                    code = exc.code().name
                    self.record_errors[code] = self.record_errors.get(code, 0) + 1

    def _call(self, msg: pb.ScoreRequest) -> pb.ScoreResponse:
        if not self.stream:
            response: pb.ScoreResponse = self.stub.Score(msg, timeout=self.timeout_s)
            return response
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = _Stream(self.stub, timeout_s=1e6)
            with self._lock:
                self._streams.append(stream)
        return stream.call(msg)

    def close(self) -> None:
        """End the streams, stop the workers and close the channel."""
        for s in self._streams:
            s.close()
        self._pool.shutdown(wait=True)
        self.channel.close()
