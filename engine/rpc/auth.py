"""Operator RPCs (``ReloadModel``) need ``authorization: Bearer <token>``.

The token comes from the environment variable ``ADMATCH_OPERATOR_TOKEN`` or, failing that,
``server.operator_token`` in the config. With neither set, operator RPCs are refused.
"""

from __future__ import annotations

import hmac
import os

import grpc

from engine.errors import PermissionDenied, Unauthenticated

ENV = "ADMATCH_OPERATOR_TOKEN"


def operator_token(configured: str) -> str:
    """The token in force: the environment's, else the config's ("" = operator RPCs off)."""
    return os.environ.get(ENV) or configured


def check_operator(context: grpc.ServicerContext, token: str) -> None:
    """Raise unless the call carries the operator token.

    Raises:
        Unauthenticated: no bearer token in the call's metadata.
        PermissionDenied: a wrong token, or no token configured on the server.
    """
    if not token:
        raise PermissionDenied(f"operator RPCs are disabled: set {ENV} on the server")
    given = dict(context.invocation_metadata()).get("authorization", "")
    if not given.startswith("Bearer "):
        raise Unauthenticated("operator RPC without 'authorization: Bearer <token>'")
    if not hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
        raise PermissionDenied("operator token not accepted")
