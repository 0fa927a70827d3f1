"""The one interceptor that maps errors to gRPC status codes.

An ``AdmatchError`` carries its status (``engine.errors``): client faults become
INVALID_ARGUMENT with the field named, a refused model FAILED_PRECONDITION, overload
RESOURCE_EXHAUSTED, not ready UNAVAILABLE, a spent time budget DEADLINE_EXCEEDED. Anything
else is a server fault: INTERNAL with a generic message, and the traceback goes to the log.
Request bytes that do not parse as the method's message are a client fault too: grpc itself
would answer INTERNAL ("Exception deserializing request!") and log a traceback.

``status_of`` is the one mapping, used for a call's status (with the standard details in the
trailing metadata: a google.rpc.BadRequest of field violations for a client fault) and for a
ScoreStream message's own ``error``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.errors import AdmatchError, InvalidArgument

log = logging.getLogger(__name__)


def status_of(exc: BaseException, where: str = "rpc") -> status_pb2.Status:
    """The google.rpc.Status of an error: an ``AdmatchError``'s own code and message, with its
    field violations as a BadRequest detail; anything else INTERNAL with a generic message (the
    traceback is logged, naming ``where``)."""
    if not isinstance(exc, AdmatchError):
        log.error("internal error in %s", where, exc_info=exc)
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    status = status_pb2.Status(code=code_pb2.Code.Value(exc.status), message=str(exc))
    violations = exc.violations()
    if violations:
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        status.details.add().Pack(detail)
    return status


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    context.abort_with_status(rpc_status.to_status(status_of(exc, method)))


class Count(Protocol):
    """Counts one outcome of an RPC by its status code name; knows the method's name."""

    method: str

    def __call__(self, code: str) -> None: ...


def code_name(exc: BaseException) -> str:
    """The status code name an error maps to (:func:`status_of`)."""
    return exc.status if isinstance(exc, AdmatchError) else "INTERNAL"


def _fail(context: grpc.ServicerContext, exc: Exception, count: Count) -> None:
    """Abort with the mapped status (a status already set, or a gRPC error, passes through)."""
    if isinstance(exc, grpc.RpcError) or context.code() is not None:
        raise exc
    count(code_name(exc))
    _abort(context, exc, count.method)


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


def parsed(request: Any) -> Any:
    """A request message as the handler got it, or raise the error of bytes that did not parse
    (a stream's handler calls this per message, to answer that message alone)."""
    if isinstance(request, _Unparsed):
        raise request.error
    return request


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], count: Count) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            reply = fn(parsed(request), context)
        except Exception as exc:  # mapped, never leaked
            _fail(context, exc, count)
        count("OK")
        return reply

    return wrapped


def _stream(
    fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]], count: Count
) -> Callable[..., Any]:
    def wrapped(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # messages are the handler's to parse (``parsed``) and count, each on its own; only
        # what ends the whole stream (too many streams, idle, a server fault) is mapped here
        try:
            yield from fn(requests, context)
        except Exception as exc:
            _fail(context, exc, count)

    return wrapped


class _Counter:
    """A :class:`Count` of one method."""

    def __init__(self, method: str, count: Callable[[str, str], None]) -> None:
        self.method = method
        self._count = count

    def __call__(self, code: str) -> None:
        self._count(self.method, code)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so errors leave as the right status code, and counts each call's
    code with ``count(method, code)`` when given."""

    def __init__(self, count: Callable[[str, str], None] | None = None) -> None:
        self.count = count or (lambda _method, _code: None)

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        count = _Counter(details.method.rsplit("/", 1)[-1], self.count)

        if handler.request_deserializer is not None:
            handler = handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer, count.method)
            )
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary, count))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_stream(handler.stream_stream, count))
        return handler
