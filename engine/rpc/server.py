"""The gRPC server: servicer, error interceptor, health checking and reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App
from engine.config import ServerConfig
from engine.rpc.auth import operator_token
from engine.rpc.errors import ErrorInterceptor
from engine.rpc.metrics import Metrics
from engine.rpc.service import AdMatchingServicer, publish_serving

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AdMatching"].full_name


def tls_credentials(limits: ServerConfig) -> grpc.ServerCredentials:
    """TLS from the config's PEM files; a client CA makes it mutual (client certs required)."""
    from pathlib import Path

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


def build_server(
    app: App, limits: ServerConfig, address: str | None = None, metrics: Metrics | None = None
) -> tuple[grpc.Server, int]:
    """A started server (``address`` default: the config's host and port; port 0 picks a free
    one); returns it and the bound port.

    Health checking reports SERVING for the service and the server; reflection lists it.
    Requests beyond ``max_concurrent`` in flight are refused with RESOURCE_EXHAUSTED, messages
    above ``max_message_bytes`` too (both by grpc itself, before any work).
    """
    metrics = metrics or Metrics()
    size = limits.max_message_bytes
    server = grpc.server(
        ThreadPoolExecutor(max_workers=limits.threads),
        interceptors=[ErrorInterceptor(metrics.request), PassBytes()],
        maximum_concurrent_rpcs=limits.max_concurrent,
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 1),  # several worker processes share the port
        ],
    )
    servicer = AdMatchingServicer(
        app,
        limits.max_candidates,
        metrics,
        operator_token(limits.operator_token),
        (limits.default_deadline_ms, limits.max_deadline_ms),
    )
    publish_serving(app, metrics)
    metrics.watch_cap_errors(lambda: app.cap_errors)
    pb_grpc.add_AdMatchingServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = address or f"{limits.host}:{limits.port}"
    port = (
        server.add_secure_port(address, tls_credentials(limits))
        if limits.tls_cert_file
        else server.add_insecure_port(address)
    )
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("admatch serving %s on port %d", SERVICE, port)
    return server, port
