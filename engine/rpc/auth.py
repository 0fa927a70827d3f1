"""Who may call what: principals with roles, proven by a bearer token or a client certificate.

Each AdMatching method needs a role (``METHOD_ROLES``): ``score`` for Score and ScoreStream,
``events`` for RecordEvents, ``operator`` for ReloadModel; GetModelInfo needs any known
principal. Health checking and reflection are always open (load balancers, tooling).

A call proves who it is with ``authorization: Bearer <token>`` (the scheme in any case) whose
SHA-256 a principal lists (``token_sha256``, or ``token_env`` naming the variable that holds
the token), or, under mutual TLS, with a client certificate whose common name or a subject
alternative name a principal lists (``certificate``). With auth off (``ServerConfig.auth_on``:
the default on a loopback host) score, events and model info are open to anyone who reaches
the port; operator RPCs always need the operator role, which the legacy ``operator_token``
(or ``ADMATCH_OPERATOR_TOKEN``) also gives.

Refusals: no credentials, or credentials no principal holds: UNAUTHENTICATED; a principal
without the method's role (or operator RPCs with no operator configured): PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from engine.config import Principal, ServerConfig
from engine.errors import PermissionDenied, Unauthenticated

ENV = "ADMATCH_OPERATOR_TOKEN"
SERVICE = "admatch.v1.AdMatching"
ANY = "any"  # the role of a method open to every known principal
METHOD_ROLES = {
    "Score": "score",
    "ScoreStream": "score",
    "RecordEvents": "events",
    "ReloadModel": "operator",
    "GetModelInfo": ANY,
}
_CERT_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """The principals of one server's config, and the check of a call against them."""

    def __init__(self, server: ServerConfig, env: Mapping[str, str] = os.environ) -> None:
        """Tokens named by ``token_env`` (and ``ADMATCH_OPERATOR_TOKEN``) are read from
        ``env`` now; a principal whose variable is unset or empty has no token."""
        self.on = server.auth_on
        principals = list(server.auth.principals)
        operator = env.get(ENV) or server.operator_token
        if operator:
            principals.append(
                Principal(name="operator_token", roles=["operator"], token_sha256=_digest(operator))
            )
        self.by_digest: dict[str, Principal] = {}
        self.by_certificate: dict[str, Principal] = {}
        for p in principals:
            for token in (
                p.token_sha256,
                _digest(env[p.token_env]) if env.get(p.token_env) else "",
            ):
                if token:
                    self.by_digest[token] = p
            if p.certificate:
                self.by_certificate[p.certificate] = p
        self.operators = any("operator" in p.roles for p in principals)

    def guards(self, method: str) -> bool:
        """Whether calls of ``method`` (its short name) are checked at all."""
        role = METHOD_ROLES.get(method)
        return role == "operator" or (self.on and role is not None)

    def who(self, context: grpc.ServicerContext) -> Principal | None:
        """The principal a call proves it is, ``None`` without credentials.

        Raises:
            Unauthenticated: a token or scheme that no principal holds.
        """
        header = dict(context.invocation_metadata()).get("authorization")
        if header is not None:
            scheme, _, token = str(header).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            known = self.by_digest.get(_digest(token.strip()))  # a hash: no timing to learn
            if known is None:
                raise Unauthenticated("bearer token not accepted")
            return known
        auth = context.auth_context() or {}
        for key in _CERT_KEYS:
            for name in auth.get(key, ()):
                principal = self.by_certificate.get(name.decode(errors="replace"))
                if principal is not None:
                    return principal
        return None

    def check(self, method: str, context: grpc.ServicerContext) -> None:
        """Raise unless the call may run ``method``.

        Raises:
            Unauthenticated: no credentials, or credentials no principal holds.
            PermissionDenied: the principal lacks the method's role; operator RPCs with no
                operator configured.
        """
        role = METHOD_ROLES[method]
        if role == "operator" and not self.operators:
            raise PermissionDenied(
                f"operator RPCs are disabled: set {ENV} on the server, or give a principal "
                "the role operator (server.auth.principals)"
            )
        principal = self.who(context)
        if principal is None:
            raise Unauthenticated(
                f"{method} needs credentials: 'authorization: Bearer <token>' or a client "
                "certificate of a principal (server.auth.principals)"
            )
        if role != ANY and role not in principal.roles:
            raise PermissionDenied(
                f"{principal.name} may not call {method}: it needs the role {role!r}, "
                f"{principal.name} has {principal.roles}"
            )


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks every AdMatching call's credentials before its handler runs (errors are mapped
    by the error interceptor around it)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.auth = authenticator

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE or not self.auth.guards(method):
            return handler
        check = self.auth.check
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                check(method, context)
                return inner(request, context)

            return handler._replace(unary_unary=unary)
        if handler.stream_stream is not None:
            streamed = handler.stream_stream

            def stream(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                check(method, context)
                yield from streamed(requests, context)

            return handler._replace(stream_stream=stream)
        return handler
