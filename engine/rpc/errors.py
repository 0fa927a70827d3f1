"""The one interceptor that maps errors to gRPC status codes.

An ``AdmatchError`` carries its status (``engine.errors``): client faults become
INVALID_ARGUMENT with the field named, a refused model FAILED_PRECONDITION, overload
RESOURCE_EXHAUSTED, not ready UNAVAILABLE, a spent time budget DEADLINE_EXCEEDED. Anything
else is a server fault: INTERNAL with a generic message, and the traceback goes to the log.
Request bytes that do not parse as the method's message are a client fault too: grpc itself
would answer INTERNAL ("Exception deserializing request!") and log a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from engine.errors import AdmatchError, InvalidArgument

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, AdmatchError):
        context.abort(grpc.StatusCode[exc.status], str(exc))
    log.exception("internal error in %s", getattr(context, "_method", "rpc"))
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


Count = Callable[[str], None]  # called once per RPC with its status code name


def _code(exc: Exception) -> str:
    return exc.status if isinstance(exc, AdmatchError) else "INTERNAL"


def _fail(context: grpc.ServicerContext, exc: Exception, count: Count) -> None:
    """Abort with the mapped status (a status already set, or a gRPC error, passes through)."""
    if isinstance(exc, grpc.RpcError) or context.code() is not None:
        raise exc
    count(_code(exc))
    _abort(context, exc)


class _Unparsed:
    """Request bytes that are not the method's message (raised as ``error`` in the handler)."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """The handler's request deserializer, returning an ``_Unparsed`` instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, whatever a parser raises
            problem = f"the bytes are not a valid request message of {method}: {exc}"
            return _Unparsed(InvalidArgument("request", problem))

    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, _Unparsed):
        raise request.error
    return request


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], count: Count) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            reply = fn(_parsed(request), context)
        except Exception as exc:  # mapped, never leaked
            _fail(context, exc, count)
        count("OK")
        return reply

    return wrapped


def _stream(
    fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]], count: Count
) -> Callable[..., Any]:
    def wrapped(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:  # a message that does not parse ends the stream after the answers before it
            yield from fn(map(_parsed, requests), context)
        except Exception as exc:
            _fail(context, exc, count)
        count("OK")

    return wrapped


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so errors leave as the right status code, and counts each call's
    code with ``count(method, code)`` when given."""

    def __init__(self, count: Callable[[str, str], None] | None = None) -> None:
        self.count = count or (lambda _method, _code: None)

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]

        def count(code: str) -> None:
            self.count(method, code)

        if handler.request_deserializer is not None:
            handler = handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer, method)
            )
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary, count))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_stream(handler.stream_stream, count))
        return handler
