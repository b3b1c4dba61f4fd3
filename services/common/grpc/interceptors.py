"""grpc.aio server interceptors, installed in this fixed order (outermost first):

    AuthInterceptor -> RequestIdInterceptor -> MetricsInterceptor -> ExceptionInterceptor

Auth (auth.py) decides before anything runs and rejects with a prebuilt aborting handler (it never
raises). The request id is put in a contextvar that handlers and log records can read. Metrics wrap the
handler and see the final status code. The exception mapper is innermost, so metrics count the
code it chose: a domain error (services.common.errors) becomes its mapped status with its message
(cut to MAX_STATUS_MESSAGE_CHARS: a status travels in HTTP/2 trailers, whose size is capped, so an
echoed input must never make it unsendable) and a `mor-error-reason` trailer; anything else becomes
INTERNAL with a generic message while the traceback goes to the log. Request bytes that do not
parse as the method's message become INVALID_ARGUMENT (reason UNDECODABLE_REQUEST, decoding.py) with
one log line, instead of grpc's UNKNOWN and a traceback per call.

Wrapping keeps the handler's shape (handlers.py): unary-unary, unary-stream, stream-unary and
stream-stream are all handled; streaming handlers may be async generators or coroutines using
context.write(). Handlers must be async (this is a grpc.aio server).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc
from grpc import aio

from services.common import errors, metrics
from services.common.grpc.auth import AuthInterceptor
from services.common.grpc.decoding import guard_decoding
from services.common.grpc.handlers import Continuation, around, metadata_value, rewrap, split_method
from services.common.grpc.status import status_for

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
ERROR_REASON_KEY = "mor-error-reason"
# Longest status message sent. gRPC refuses trailers over 16 KiB (the client then sees
# RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"); 1024 characters stay far below
# that even as 4-byte UTF-8, and are plenty for a message that names the field and the limit.
MAX_STATUS_MESSAGE_CHARS = 1024

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("mor_request_id", default="-")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def current_request_id() -> str:
    """The id of the RPC being handled ("-" outside one)."""
    return _request_id.get()


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record, so a format can show `%(request_id)s`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class RequestIdInterceptor(aio.ServerInterceptor):
    """Sets the request-id contextvar from 'x-request-id' metadata, or makes a fresh one."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        given = metadata_value(handler_call_details, REQUEST_ID_KEY)
        _request_id.set(given if given and _REQUEST_ID_RE.match(given) else uuid.uuid4().hex)
        return await continuation(handler_call_details)


def _final_code(context: aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client sees: OK, the code a handler set or aborted with, CANCELLED, or
    UNKNOWN for an exception nobody mapped (only without the exception interceptor)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if exc is None or isinstance(exc, aio.AbortError):
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


class MetricsInterceptor(aio.ServerInterceptor):
    """Counts RPCs by final code, times them, and tracks how many are in flight."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)
        in_flight = metrics.GRPC_SERVER_IN_FLIGHT.labels(service, method)
        latency = metrics.GRPC_SERVER_LATENCY.labels(service, method)

        def on_start(_context: aio.ServicerContext) -> dict[str, Any]:
            in_flight.inc()
            return {"t0": time.perf_counter(), "exc": None}

        async def on_error(exc: BaseException, _context: aio.ServicerContext, state: dict[str, Any]) -> None:
            state["exc"] = exc

        def on_end(context: aio.ServicerContext, state: dict[str, Any]) -> None:
            in_flight.dec()
            latency.observe(time.perf_counter() - state["t0"])
            code = _final_code(context, state["exc"])
            metrics.GRPC_SERVER_REQUESTS.labels(service, method, code.name).inc()

        return rewrap(handler, lambda b, s: around(b, s, on_start, on_error, on_end))


class ExceptionInterceptor(aio.ServerInterceptor):
    """Turns exceptions from handlers into status codes via services.common.grpc.status.status_for."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def on_error(exc: BaseException, context: aio.ServicerContext, _state: Any) -> None:
            await abort_for(exc, context, method)

        guarded = guard_decoding(handler, method)
        return rewrap(guarded, lambda b, s: around(b, s, _noop_start, on_error, _noop_end))


def _noop_start(_context: aio.ServicerContext) -> None:
    return None


def _noop_end(_context: aio.ServicerContext, _state: Any) -> None:
    return None


async def abort_for(exc: BaseException, context: aio.ServicerContext, method: str = "?") -> None:
    """Abort `context` with the status mapped from `exc` (raises AbortError). Returns without
    aborting for exceptions that are not errors of the handler: an abort already under way
    (AbortError) and cancellation (client went away or the deadline passed)."""
    if isinstance(exc, aio.AbortError | asyncio.CancelledError | GeneratorExit):
        return
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: let them through
        return
    code, message = status_for(exc)
    message = bounded_message(message)
    if not isinstance(exc, errors.MorError) or code == grpc.StatusCode.INTERNAL:
        log.error("unhandled %s in %s [request_id=%s]", type(exc).__name__, method, current_request_id(),
                  exc_info=exc)
        await context.abort(code, message)
    else:
        log.info("%s -> %s (%s): %s [request_id=%s]", method, code.name, exc.reason, message,
                 current_request_id())
        await context.abort(code, message, trailing_metadata=((ERROR_REASON_KEY, exc.reason),))


def bounded_message(message: str, limit: int = MAX_STATUS_MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters and `limit` bytes of UTF-8 (an echoed 4-byte character
    counts 4), saying how much was cut (a status must stay sendable and small)."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return message
    keep = limit - 48  # room for the note, whose count has at most 20 digits
    head = data[:keep].decode("utf-8", "ignore")  # never half a character
    return f"{head}... [{len(message) - len(head)} more characters cut]"


def default_interceptors(
    token_digests: Mapping[str, str],
    allowed_callers: Collection[str] = (),
    *,
    callers: Callable[[str], Collection[str] | None] | None = None,
    cert_identities: bool = False,
    cert_field: str = "common_name",
) -> list[aio.ServerInterceptor]:
    """The standard chain, in its fixed order: auth -> request id -> metrics -> exception-to-status.
    See AuthInterceptor for the auth arguments."""
    return [
        AuthInterceptor(token_digests, allowed_callers, callers=callers, cert_identities=cert_identities,
                        cert_field=cert_field),
        RequestIdInterceptor(),
        MetricsInterceptor(),
        ExceptionInterceptor(),
    ]


__all__ = [
    "ERROR_REASON_KEY",
    "MAX_STATUS_MESSAGE_CHARS",
    "REQUEST_ID_KEY",
    "ExceptionInterceptor",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "RequestIdLogFilter",
    "abort_for",
    "bounded_message",
    "current_request_id",
    "default_interceptors",
]
