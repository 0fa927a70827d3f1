"""Prometheus metrics of the service, on a registry of their own (no module-level state).

Exported: ``admatch_requests_total{method,code}``, ``admatch_stage_seconds{stage}`` (decode,
caps, features, model, rank, encode; with batching also "batched", a request's time from
queueing to its decision, while features, model and rank are observed once per pass),
``admatch_decisions_total{reason}`` (CAP_STORE_UNAVAILABLE among them: candidates refused
because the store did not answer, failing closed), ``admatch_scored_requests_total``,
``admatch_no_ad_total``, ``admatch_cap_store_errors`` (store calls that failed, timed out or
were refused by the open circuit, answered with the fail mode), ``admatch_cap_store_up`` (0
while the store's circuit is open) and
``admatch_model_info{model_version,config_version,runtime}``, with batching on
``admatch_batch_passes`` and ``admatch_batch_pass_requests`` (passes run and the requests
decided in them, so far: their rates' ratio is the mean pass) and ``admatch_batch_target``
(how many requests a pass waits for, within ``server.batch_window_ms``), and with the decision log
``admatch_log_rows{kind}``, ``admatch_log_dropped{kind}`` and ``admatch_log_up{kind}``.
ScoreStream is counted per message in ``admatch_requests_total``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.scoring.types import REASON_NAMES, Decision
from engine.timing import CallbackTimer

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's metrics; ``timer()`` feeds the stage histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "admatch_requests", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.stages = Histogram(
            "admatch_stage_seconds",
            "Seconds per stage of a request",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "admatch_decisions", "Candidate decisions by reason", ["reason"], registry=r
        )
        self.scored = Counter("admatch_scored_requests", "Requests scored", registry=r)
        self.no_ad = Counter("admatch_no_ad", "Requests answered with no ad", registry=r)
        self.cap_errors = Gauge(
            "admatch_cap_store_errors",
            "Cap-store calls that failed, timed out or met the open circuit",
            registry=r,
        )
        self.cap_store_up = Gauge(
            "admatch_cap_store_up",
            "1 while the cap store answers, 0 while its circuit is open",
            registry=r,
        )
        self.log_rows = Gauge(
            "admatch_log_rows", "Rows written to the decision or event log", ["kind"], registry=r
        )
        self.log_dropped = Gauge(
            "admatch_log_dropped",
            "Items the decision or event log dropped (queue full, or the write failed)",
            ["kind"],
            registry=r,
        )
        self.log_up = Gauge(
            "admatch_log_up", "1 while the log's last write succeeded", ["kind"], registry=r
        )
        self.model = Gauge(
            "admatch_model_info",
            "The model serving (value 1)",
            ["model_version", "config_version", "runtime"],
            registry=r,
        )
        self.batch_passes = Gauge(
            "admatch_batch_passes", "Scoring passes run so far (batching)", registry=r
        )
        self.batch_requests = Gauge(
            "admatch_batch_pass_requests", "Requests decided in those passes", registry=r
        )
        self.batch_target = Gauge(
            "admatch_batch_target",
            "Requests a pass waits for (the largest recent pass), within the window",
            registry=r,
        )
        self._stage: dict[str, Any] = {}  # labelled children, looked up once
        self._reason: dict[int, Any] = {}  # by reason code
        self._request: dict[tuple[str, str], Any] = {}

    def timer(self) -> CallbackTimer:
        """A stage timer observing into ``admatch_stage_seconds``."""
        return CallbackTimer(self._observe)

    def _observe(self, stage: str, seconds: float) -> None:
        child = self._stage.get(stage)
        if child is None:  # labels() takes a lock and builds a key: once per stage name
            child = self._stage.setdefault(stage, self.stages.labels(stage))
        child.observe(seconds)

    def request(self, method: str, code: str) -> None:
        """Count one RPC by method and status code."""
        child = self._request.get((method, code))
        if child is None:
            child = self._request.setdefault((method, code), self.requests.labels(method, code))
        child.inc()

    def decision(self, decision: Decision) -> None:
        """Count one request's decisions (one counter update per reason, not per candidate)."""
        self.scored.inc()
        if decision.no_ad:
            self.no_ad.inc()
        counts = np.bincount(decision.reason_code, minlength=len(REASON_NAMES))
        for code in np.flatnonzero(counts).tolist():
            child = self._reason.get(code)
            if child is None:
                child = self._reason.setdefault(code, self.decisions.labels(REASON_NAMES[code]))
            child.inc(int(counts[code]))

    def serving(self, model_version: str, config_version: str, runtime: str) -> None:
        """Mark the model serving now (the previous one's series is removed)."""
        self.model.clear()
        self.model.labels(model_version, config_version, runtime).set(1)

    def watch_cap_store(self, errors: Callable[[], float], up: Callable[[], bool]) -> None:
        """Report the cap gate's error count and the store's state when scraped."""
        self.cap_errors.set_function(errors)
        self.cap_store_up.set_function(lambda: float(up()))

    def watch_batching(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        """Report the batcher's passes, their requests and its target when scraped
        (``stats()``: ``App.batch_stats``)."""
        self.batch_passes.set_function(lambda: stats()[0])
        self.batch_requests.set_function(lambda: stats()[1])
        self.batch_target.set_function(lambda: stats()[2])

    def watch_log(self, kind: str, stats: Callable[[], Any]) -> None:
        """Report a log stream's rows, drops and state when scraped (``stats()``: its
        ``StreamStats``)."""
        self.log_rows.labels(kind).set_function(lambda: stats().rows)
        self.log_dropped.labels(kind).set_function(lambda: stats().dropped)
        self.log_up.labels(kind).set_function(lambda: float(stats().healthy))

    def serve_http(self, host: str, port: int) -> None:
        """Expose /metrics on ``host:port`` (a thread of this process)."""
        start_http_server(port, addr=host, registry=self.registry)
