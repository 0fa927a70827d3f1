"""What the standard health service reports, and when it changes.

* ``""`` (the server): SERVING while it takes calls; NOT_SERVING from the moment it starts to
  drain (SIGTERM) until it stops.
* ``admatch.v1.AdMatching`` (the service): NOT_SERVING while draining, and while the cap store
  is down (its circuit open) when the server fails closed: every answer would be "no ad"
  (reason CAP_STORE_UNAVAILABLE), which is no real answer, so a load balancer should send the
  traffic to a server that has its store. SERVING again as soon as the store answers. Failing
  open, a server without its store still gives real answers (caps unchecked) and stays SERVING.

A load balancer should check the service name; docs/operations.md says what it sees on each
fault.

* ``admatch.v1.DecisionLog`` (when the server keeps decision and event logs): NOT_SERVING while
  the logs cannot be written (rows are dropped and counted; the service answers on), SERVING
  when they can. Not for load balancers: a detail for operators and monitors.
"""

from __future__ import annotations

import threading

from grpc_health.v1 import health, health_pb2

from engine.app import App

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOGS = "admatch.v1.DecisionLog"


class Health:
    """Keeps the health servicer's statuses in step with the app and the server's life."""

    def __init__(self, servicer: health.HealthServicer, app: App, service: str) -> None:
        self.servicer = servicer
        self.app = app
        self.service = service
        self.draining = False
        self._lock = threading.Lock()
        app.store.breaker.listen(lambda _up: self.update())
        app.after_commit(self.update)
        if app.logs is not None:
            for stream in (app.logs.decisions, app.logs.events):
                stream.listen(lambda _ok: self.update())

    def serving(self) -> bool:
        """Whether the service can give real answers now."""
        store_down_closed = not self.app.store_up and not self.app.gate.fail_open
        return not self.draining and not store_down_closed

    def update(self) -> None:
        """Publish the statuses (after a store state change, a reload, the start of draining)."""
        with self._lock:
            self.servicer.set("", NOT_SERVING if self.draining else SERVING)
            self.servicer.set(self.service, SERVING if self.serving() else NOT_SERVING)
            if self.app.logs is not None:
                self.servicer.set(LOGS, SERVING if self.app.logs.healthy else NOT_SERVING)

    def drain(self) -> None:
        """NOT_SERVING for good: the server is about to stop."""
        self.draining = True
        self.update()
