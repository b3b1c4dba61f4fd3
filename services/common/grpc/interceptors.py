"""grpc.aio server interceptors, installed in this fixed order (outermost first):

    AuthInterceptor -> RequestIdInterceptor -> MetricsInterceptor -> ExceptionInterceptor

Auth decides before anything runs and rejects with a prebuilt aborting handler (it never raises).
The request id is put in a contextvar that handlers and log records can read. Metrics wrap the
handler and see the final status code. The exception mapper is innermost, so metrics count the
code it chose: a domain error (services.common.errors) becomes its mapped status with its message
(cut to MAX_STATUS_MESSAGE_CHARS: a status travels in HTTP/2 trailers, whose size is capped, so an
echoed input must never make it unsendable) and a `mor-error-reason` trailer; anything else becomes
INTERNAL with a generic message while the traceback goes to the log. Request bytes that do not
parse as the method's message become INVALID_ARGUMENT (reason UNDECODABLE_REQUEST) with one log
line, instead of grpc's UNKNOWN and a traceback per call.

Wrapping keeps the handler's shape: unary-unary, unary-stream, stream-unary and stream-stream
are all handled; streaming handlers may be async generators or coroutines using context.write().
Handlers must be async (this is a grpc.aio server).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import grpc
from grpc import aio

from services.common import errors, metrics
from services.common.certs import token_digest

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
REQUEST_ID_KEY = "x-request-id"
ERROR_REASON_KEY = "mor-error-reason"
# Longest status message sent. gRPC refuses trailers over 16 KiB (the client then sees
# RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"); 1024 characters stay far below
# that even as 4-byte UTF-8, and are plenty for a message that names the field and the limit.
MAX_STATUS_MESSAGE_CHARS = 1024

# Methods under these prefixes need no token: probes and discovery must work for load balancers
# and operators that hold no caller identity.
OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("mor_request_id", default="-")
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("mor_caller", default=None)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def current_request_id() -> str:
    """The id of the RPC being handled ("-" outside one)."""
    return _request_id.get()


def current_caller() -> str | None:
    """The caller identity the auth interceptor accepted (None when auth is off or outside an RPC)."""
    return _caller.get()


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record, so a format can show `%(request_id)s`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


def split_method(full_method: str) -> tuple[str, str]:
    """'/mor.v1.RewardNode/Score' -> ('mor.v1.RewardNode', 'Score')."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return (service or "unknown"), (method or "unknown")


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


# --- handler plumbing ------------------------------------------------------------------------

_Behavior = Callable[..., Any]
_Wrap = Callable[[_Behavior, bool], _Behavior]


def _rewrap(handler: grpc.RpcMethodHandler, wrap: _Wrap) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler`, whose behaviour is `wrap(behaviour, streaming_out)`."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True), handler.request_deserializer, handler.response_serializer
    )


def _around(
    behavior: _Behavior,
    streaming_out: bool,
    on_start: Callable[[aio.ServicerContext], Any],
    on_error: Callable[[BaseException, aio.ServicerContext, Any], Awaitable[None]],
    on_end: Callable[[aio.ServicerContext, Any], None],
) -> _Behavior:
    """Wrap a behaviour with start/error/end hooks, keeping its shape.

    on_error is awaited with the exception and may abort the call (raising AbortError); when it
    returns, the exception is re-raised. on_end always runs, after on_error.
    """
    if streaming_out and inspect.isasyncgenfunction(behavior):

        async def gen_wrapper(request_or_iterator: Any, context: aio.ServicerContext) -> Any:
            state = on_start(context)
            try:
                async for item in behavior(request_or_iterator, context):
                    yield item
            except BaseException as exc:
                await on_error(exc, context, state)
                raise
            finally:
                on_end(context, state)

        return gen_wrapper

    async def wrapper(request_or_iterator: Any, context: aio.ServicerContext) -> Any:
        state = on_start(context)
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        except BaseException as exc:
            await on_error(exc, context, state)
            raise
        finally:
            on_end(context, state)

    return wrapper


_HANDLER_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _shape(handler: grpc.RpcMethodHandler | None) -> str:
    """The handler's shape, a key of _HANDLER_FACTORIES (unary-unary when the method is unknown)."""
    if handler is None or handler.unary_unary:
        return "unary_unary"
    if handler.unary_stream:
        return "unary_stream"
    if handler.stream_unary:
        return "stream_unary"
    return "stream_stream"


def _aborting_handler(shape: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the given shape that only aborts with (code, message). Requests stay
    undeserialised bytes: nothing of an unauthenticated request is parsed."""

    async def abort(_request_or_iterator: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    return _HANDLER_FACTORIES[shape](abort)


class _Undecodable:
    """Stands in for a request message whose bytes did not parse (see _guard_decoding)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize` that returns an _Undecodable instead of raising: grpc turns a raising
    deserializer into UNKNOWN and logs a traceback, before any interceptor could map it."""
    if deserialize is None:
        return None

    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: bad bytes from the caller
            return _Undecodable(exc)

    return guarded


def _undecodable(method: str, error: Exception) -> errors.InvalidInput:
    _, name = split_method(method)
    return errors.InvalidInput(
        f"request bytes do not parse as the {name} request message ({type(error).__name__})",
        reason="UNDECODABLE_REQUEST",
    )


def _guard_decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler with a deserializer that cannot raise, and a behaviour that raises
    InvalidInput (inside the exception mapper) when it meets a request that did not parse."""
    shape = _shape(handler)
    behavior = getattr(handler, shape)
    safe = _safe_deserializer(handler.request_deserializer)

    # The request argument is one message (unary_*) or a stream of them (stream_*); either way
    # the behaviour sees it through a check that raises at the first message that did not parse.
    if shape.startswith("unary_"):
        def check(request: Any) -> Any:
            if isinstance(request, _Undecodable):
                raise _undecodable(method, request.error)
            return request
    else:
        async def check(requests: Any) -> Any:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    raise _undecodable(method, request.error)
                yield request

    if inspect.isasyncgenfunction(behavior):
        async def guarded_gen(arg: Any, context: aio.ServicerContext) -> Any:
            async for item in behavior(check(arg), context):
                yield item

        guarded: _Behavior = guarded_gen
    else:
        async def guarded_call(arg: Any, context: aio.ServicerContext) -> Any:
            result = behavior(check(arg), context)
            return await result if inspect.isawaitable(result) else result

        guarded = guarded_call
    return _HANDLER_FACTORIES[shape](guarded, safe, handler.response_serializer)


# --- interceptors ----------------------------------------------------------------------------


MAX_IDENTITY_CHARS = 64


def _shown(identity: str | None) -> str:
    """An identity as a status message shows it: quoted, cut to MAX_IDENTITY_CHARS (a token's
    identity is ours, a certificate's name comes from the peer, so neither may make the message long)."""
    if identity is None:
        return "none"
    cut = identity[:MAX_IDENTITY_CHARS]
    return repr(cut) + ("..." if len(identity) > MAX_IDENTITY_CHARS else "")


def certificate_identity(context: aio.ServicerContext, field: str = "common_name") -> str | None:
    """The verified client certificate's name from the TLS auth context: its common name
    (field "common_name") or first DNS subject alternative name ("dns_san"); None without one.
    Only meaningful when the server demands and verifies client certificates (mutual TLS)."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a plaintext call has no auth context worth reading
        return None
    if field == "dns_san":
        values = [v for v in auth.get("x509_subject_alternative_name", ()) if not _is_ip(v)]
    else:
        values = list(auth.get("x509_common_name", ()))
    if not values:
        return None
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_ip(value: bytes | str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return False
    return True


class AuthInterceptor(aio.ServerInterceptor):
    """Caller identity and per-method authorisation.

    The identity comes from a bearer token ('authorization: Bearer <token>' checked against
    {sha256 digest: identity}) and, with `cert_identities`, from the verified client certificate
    of a mutual-TLS connection (its common name, or first DNS SAN). When both are present they
    must name the same identity. Then the method must allow it: `callers(method)` returns the
    allowed identities (None: every authenticated one).

    No or unknown token (when tokens are configured), or no identity at all -> UNAUTHENTICATED.
    A certificate and token naming different identities, or an identity the method does not
    allow -> PERMISSION_DENIED, with a message naming both (bounded). Token failures are decided
    before the method's handler is looked up and nothing of the request is parsed; certificate
    checks need the call's TLS context, so they run first thing in the call, still before the
    request bytes are deserialised. With neither tokens nor certificate identities, auth is off
    and every call passes. Methods under OPEN_METHOD_PREFIXES (health, reflection) always pass.
    """

    def __init__(
        self,
        token_digests: Mapping[str, str],
        allowed_callers: Collection[str] = (),
        *,
        callers: Callable[[str], Collection[str] | None] | None = None,
        cert_identities: bool = False,
        cert_field: str = "common_name",
        open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES,
    ) -> None:
        """`callers(short method name)` gives each method's allow-list; without it every method
        allows `allowed_callers` (empty: every authenticated identity)."""
        self._digests = dict(token_digests)
        default = frozenset(allowed_callers) or None
        self._callers = callers or (lambda _method: default)
        self._certs = cert_identities
        self._cert_field = cert_field
        self._open = open_prefixes
        codes = grpc.StatusCode
        self._reject = {
            "missing": (codes.UNAUTHENTICATED, "missing bearer token in 'authorization' metadata"),
            "bad": (codes.UNAUTHENTICATED, "invalid bearer token"),
            "denied": (codes.PERMISSION_DENIED, "caller is not allowed to call this method"),
        }
        # Prebuilt aborting handlers, one per (reason, handler shape); see _aborting_handler.
        self._prebuilt: dict[tuple[str, str], grpc.RpcMethodHandler] = {}
        for reason, (code, message) in self._reject.items():
            for shape in _HANDLER_FACTORIES:
                self._prebuilt[(reason, shape)] = _aborting_handler(shape, code, message)

    @property
    def enabled(self) -> bool:
        return bool(self._digests) or self._certs

    def _allowed(self, method: str, caller: str) -> bool:
        allowed = self._callers(split_method(method)[1])
        return allowed is None or caller in allowed

    def check(self, authorization: str | None, method: str = "") -> tuple[str | None, str | None]:
        """(caller, None) when the token is valid and the caller may call `method`, else
        (caller or None, rejection reason). Pure; for tests."""
        if not authorization:
            return None, "missing"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, "missing"
        caller = self._digests.get(token_digest(token))
        if caller is None:
            return None, "bad"
        if not self._allowed(method, caller):
            return caller, "denied"
        return caller, None

    def _count(self, method: str, code: grpc.StatusCode, why: str, caller: str | None) -> None:
        service, name = split_method(method)
        metrics.GRPC_SERVER_REJECTED.labels(service, name, code.name).inc()
        log.warning("rejected %s: %s (caller=%s)", method, why, _shown(caller))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not self.enabled or method.startswith(self._open):
            return await continuation(handler_call_details)
        token_caller: str | None = None
        if self._digests:
            token_caller, rejection = self.check(_metadata_value(handler_call_details, AUTHORIZATION_KEY), method)
            if rejection is not None:
                # Look the handler up only to learn its shape, so the abort speaks the method's protocol.
                handler = await continuation(handler_call_details)
                code, _ = self._reject[rejection]
                self._count(method, code, rejection, token_caller)
                return self._prebuilt[(rejection, _shape(handler))]
        if not self._certs:
            _caller.set(token_caller)
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        async def authorise(context: aio.ServicerContext) -> None:
            cert_caller = certificate_identity(context, self._cert_field)
            if token_caller is not None and cert_caller is not None and cert_caller != token_caller:
                code, why = grpc.StatusCode.PERMISSION_DENIED, (
                    f"client certificate identity {_shown(cert_caller)} does not match bearer token identity "
                    f"{_shown(token_caller)}: present the certificate and the token of one caller")
            else:
                caller = token_caller or cert_caller
                if caller is None:
                    code, why = grpc.StatusCode.UNAUTHENTICATED, "no caller identity: no client certificate name"
                elif not self._allowed(method, caller):
                    code, why = grpc.StatusCode.PERMISSION_DENIED, (
                        f"caller {_shown(caller)} is not allowed to call {split_method(method)[1]}")
                else:
                    _caller.set(caller)
                    return
            self._count(method, code, why, token_caller or cert_caller)
            await context.abort(code, why)

        return _authorised_first(handler, authorise)


def _authorised_first(
    handler: grpc.RpcMethodHandler, authorise: Callable[[aio.ServicerContext], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    """The same handler, whose call first awaits `authorise(context)` (which may abort) and only
    then deserialises the request bytes: a refused caller's request is never parsed."""
    shape = _shape(handler)
    behavior = getattr(handler, shape)
    deserialize = handler.request_deserializer or (lambda raw: raw)

    if shape.startswith("unary_"):
        def parse(raw: Any) -> Any:
            return deserialize(raw)
    else:
        async def parse(raws: Any) -> Any:
            async for raw in raws:
                yield deserialize(raw)

    if inspect.isasyncgenfunction(behavior):
        async def first_gen(arg: Any, context: aio.ServicerContext) -> Any:
            await authorise(context)
            async for item in behavior(parse(arg), context):
                yield item

        wrapped: _Behavior = first_gen
    else:
        async def first_call(arg: Any, context: aio.ServicerContext) -> Any:
            await authorise(context)
            result = behavior(parse(arg), context)
            return await result if inspect.isawaitable(result) else result

        wrapped = first_call
    return _HANDLER_FACTORIES[shape](wrapped, None, handler.response_serializer)


class RequestIdInterceptor(aio.ServerInterceptor):
    """Sets the request-id contextvar from 'x-request-id' metadata, or makes a fresh one."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        given = _metadata_value(handler_call_details, REQUEST_ID_KEY)
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

        return _rewrap(handler, lambda b, s: _around(b, s, on_start, on_error, on_end))


class ExceptionInterceptor(aio.ServerInterceptor):
    """Turns exceptions from handlers into status codes via services.common.errors.status_for."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def on_error(exc: BaseException, context: aio.ServicerContext, _state: Any) -> None:
            await abort_for(exc, context, method)

        guarded = _guard_decoding(handler, method)
        return _rewrap(guarded, lambda b, s: _around(b, s, _noop_start, on_error, _noop_end))


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
    code, message = errors.status_for(exc)
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
    "AUTHORIZATION_KEY",
    "ERROR_REASON_KEY",
    "MAX_STATUS_MESSAGE_CHARS",
    "OPEN_METHOD_PREFIXES",
    "REQUEST_ID_KEY",
    "AuthInterceptor",
    "ExceptionInterceptor",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "RequestIdLogFilter",
    "abort_for",
    "certificate_identity",
    "bounded_message",
    "current_caller",
    "current_request_id",
    "default_interceptors",
    "split_method",
]
