"""The gRPC server: servicer, interceptors (errors, credentials), health and reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App
from engine.config import ServerConfig
from engine.errors import AdmatchError
from engine.rpc.auth import Authenticator, AuthInterceptor
from engine.rpc.errors import ErrorInterceptor
from engine.rpc.health import Health
from engine.rpc.metrics import Metrics
from engine.rpc.service import AdMatchingServicer, Reloader, publish_serving

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AdMatching"].full_name


class BindError(AdmatchError):
    """The server could not listen on its address."""

    status = "UNAVAILABLE"


def tls_credentials(limits: ServerConfig) -> grpc.ServerCredentials:
    """TLS from the config's PEM files; a client CA makes it mutual (client certs required)."""
    key = Path(limits.tls_key_file).read_bytes()
    cert = Path(limits.tls_cert_file).read_bytes()
    ca = Path(limits.tls_client_ca_file).read_bytes() if limits.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class PassBytes(grpc.ServerInterceptor):
    """Responses a servicer method returns already serialized (``bytes``: ``Score`` writes its
    response with ``engine.rpc.wire``) leave as they are; messages are serialized as usual.
    Parsing the written bytes into a message only for gRPC to serialize it again cost ~30 us a
    response of 100 candidates."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.response_serializer is None:
            return handler
        serialize = handler.response_serializer

        def serialize_unless_bytes(reply: Any) -> bytes:
            return reply if isinstance(reply, bytes) else serialize(reply)

        return handler._replace(response_serializer=serialize_unless_bytes)


@dataclass
class Serving:
    """A started server: the bound port, its health, and how to stop it."""

    server: grpc.Server
    port: int
    health: Health
    servicer: AdMatchingServicer

    def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, stop taking calls, give those in flight ``grace_s`` to finish."""
        self.health.drain()
        self.server.stop(grace=grace_s).wait()


def build_server(
    app: App,
    limits: ServerConfig,
    address: str | None = None,
    metrics: Metrics | None = None,
    reloader: Reloader | None = None,
) -> Serving:
    """A started server (``address`` default: the config's host and port; port 0 picks a free
    one) sharing its port only with the other workers of its ``admatch serve``
    (``port.claim_port`` keeps everyone else out).

    Health checking follows ``health.Health``; reflection lists the service. Requests beyond
    ``max_concurrent`` in flight and streams beyond ``max_streams`` are refused with
    RESOURCE_EXHAUSTED (``admission``), messages above ``max_message_bytes`` by grpc itself;
    health is never refused (there are threads for it: ``ServerConfig.threads``).

    Raises:
        BindError: the address could not be bound (in use, not an address of this host).
    """
    metrics = metrics or Metrics()
    size = limits.max_message_bytes
    server = grpc.server(
        ThreadPoolExecutor(max_workers=limits.threads, thread_name_prefix="admatch-rpc"),
        interceptors=[
            ErrorInterceptor(metrics.request),
            AuthInterceptor(Authenticator(limits)),
            PassBytes(),
        ],
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 1),  # the workers of one admatch serve share the port
        ],
    )
    servicer = AdMatchingServicer(app, limits, metrics, reloader)
    publish_serving(app, metrics)
    metrics.watch_cap_store(lambda: app.gate.errors, lambda: app.store_up)
    if app.batch_max > 1:
        metrics.watch_batching(lambda: app.batch_stats)
    if app.logs is not None:
        logs = app.logs
        metrics.watch_log("decisions", lambda: logs.decisions.stats)
        metrics.watch_log("events", lambda: logs.events.stats)
    pb_grpc.add_AdMatchingServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = address or f"{limits.host}:{limits.port}"
    try:
        port = (
            server.add_secure_port(address, tls_credentials(limits))
            if limits.tls_cert_file
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise BindError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise BindError(f"cannot listen on {address}")
    state = Health(health_servicer, app, SERVICE)
    state.update()
    server.start()
    log.info("admatch serving %s on port %d", SERVICE, port)
    return Serving(server, port, state, servicer)
