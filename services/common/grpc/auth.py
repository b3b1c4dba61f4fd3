"""Caller identity and per-method authorisation: the first of the server interceptors (AuthInterceptor).

It decides before anything runs and rejects with a prebuilt aborting handler (it never raises); the
identity it accepted is put in a contextvar that handlers read with current_caller().
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import grpc
from grpc import aio

from services.common import metrics
from services.common.certs import token_digest
from services.common.grpc.handlers import (
    HANDLER_FACTORIES,
    Behavior,
    Continuation,
    aborting_handler,
    handler_shape,
    metadata_value,
    split_method,
)

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"

# Methods under these prefixes need no token: probes and discovery must work for load balancers
# and operators that hold no caller identity.
OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("mor_caller", default=None)


def current_caller() -> str | None:
    """The caller identity the auth interceptor accepted (None when auth is off or outside an RPC)."""
    return _caller.get()


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
        # Prebuilt aborting handlers, one per (reason, handler shape); see aborting_handler.
        self._prebuilt: dict[tuple[str, str], grpc.RpcMethodHandler] = {}
        for reason, (code, message) in self._reject.items():
            for shape in HANDLER_FACTORIES:
                self._prebuilt[(reason, shape)] = aborting_handler(shape, code, message)

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
            token_caller, rejection = self.check(metadata_value(handler_call_details, AUTHORIZATION_KEY), method)
            if rejection is not None:
                # Look the handler up only to learn its shape, so the abort speaks the method's protocol.
                handler = await continuation(handler_call_details)
                code, _ = self._reject[rejection]
                self._count(method, code, rejection, token_caller)
                return self._prebuilt[(rejection, handler_shape(handler))]
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
    shape = handler_shape(handler)
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

        wrapped: Behavior = first_gen
    else:
        async def first_call(arg: Any, context: aio.ServicerContext) -> Any:
            await authorise(context)
            result = behavior(parse(arg), context)
            return await result if inspect.isawaitable(result) else result

        wrapped = first_call
    return HANDLER_FACTORIES[shape](wrapped, None, handler.response_serializer)


__all__ = [
    "AUTHORIZATION_KEY",
    "MAX_IDENTITY_CHARS",
    "OPEN_METHOD_PREFIXES",
    "AuthInterceptor",
    "certificate_identity",
    "current_caller",
]
