"""Client side: channels built from an EndpointSection, and retries for idempotent calls.

Bearer tokens: over TLS the token is a call credential (gRPC itself refuses to send call
credentials over plaintext). Over a plaintext channel (tls.insecure, local demos and tests) a
client interceptor adds the same 'authorization: Bearer <token>' metadata to every call instead,
after a loud warning that the token crosses the wire unencrypted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio

from services.common import metrics
from services.common.config import AuthSection, ConfigError, EndpointSection
from services.common.config.sections import MiB
from services.common.grpc.auth import AUTHORIZATION_KEY
from services.common.grpc.credentials import channel_credentials, channel_options, warn_insecure
from services.common.grpc.handlers import split_method
from services.common.grpc.interceptors import ERROR_REASON_KEY

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB
DEFAULT_RETRY_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)

Resp = TypeVar("Resp")


def read_token(auth: AuthSection, *, prefix: str = "auth.") -> str | None:
    """The client token from auth.token or auth.token_file (stripped), or None; errors name the field."""
    if auth.token is not None:
        value = auth.token.get_secret_value().strip()
        if not value:
            raise ConfigError(f"{prefix}token is empty")
        return value
    if auth.token_file is None:
        return None
    path = Path(auth.token_file)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{prefix}token_file: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{prefix}token_file: cannot read {path}: {exc.strerror}") from None
    if not value or any(c.isspace() for c in value):
        raise ConfigError(f"{prefix}token_file: {path} must hold one token on one line")
    return value


def _with_metadata(details: aio.ClientCallDetails, extra: Sequence[tuple[str, str]]) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
    for key, value in extra:
        metadata.add(key, value)
    return aio.ClientCallDetails(
        method=details.method, timeout=details.timeout, metadata=metadata,
        credentials=details.credentials, wait_for_ready=details.wait_for_ready,
    )


class _FixedMetadata:
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    async def _call(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request)


# grpc.aio files a client interceptor under the FIRST call kind it implements only (an elif chain
# in aio.Channel), so one object implementing all four kinds would never see streaming calls. Each
# kind therefore gets its own class; `metadata_interceptors` returns one of each.
class _UnaryUnaryMetadata(_FixedMetadata, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _UnaryStreamMetadata(_FixedMetadata, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _StreamUnaryMetadata(_FixedMetadata, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


class _StreamStreamMetadata(_FixedMetadata, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


def metadata_interceptors(metadata: Sequence[tuple[str, str]]) -> list[aio.ClientInterceptor]:
    """Interceptors that add fixed metadata (for plaintext channels: the bearer token) to every
    call, of every kind (unary and streaming)."""
    return [cls(metadata) for cls in (_UnaryUnaryMetadata, _UnaryStreamMetadata, _StreamUnaryMetadata,
                                      _StreamStreamMetadata)]


def create_channel(
    endpoint: EndpointSection,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    server_name: str | None = None,
    interceptors: Sequence[aio.ClientInterceptor] = (),
    prefix: str = "",
    extra_options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    """An aio channel to `endpoint.address`: TLS (mTLS with tls.cert/key) or, only when
    tls.insecure, plaintext with a loud warning; the token from auth.token / auth.token_file is
    sent with every call. `server_name` overrides the name checked against the server
    certificate. `prefix` (e.g. "nodes.0.") is put before field names in errors. `extra_options`
    are appended to the shared channel options (e.g. a grpc.service_config).
    Close it with `await channel.close()`."""
    token = read_token(endpoint.auth, prefix=f"{prefix}auth.")
    options = channel_options(max_message_bytes, server_name=server_name) + list(extra_options)
    creds = channel_credentials(endpoint.tls, prefix=f"{prefix}tls.")
    chain = list(interceptors)
    if creds is None:
        warn_insecure("channel", endpoint.address)
        if token is not None:
            log.warning("!!! the bearer token for %s is sent over PLAINTEXT; anyone on the path can "
                        "read and replay it !!!", endpoint.address)
            chain[:0] = metadata_interceptors([(AUTHORIZATION_KEY, f"Bearer {token}")])
        return aio.insecure_channel(endpoint.address, options=options, interceptors=chain or None)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return aio.secure_channel(endpoint.address, creds, options=options, interceptors=chain or None)


def error_reason(error: grpc.RpcError) -> str | None:
    """The server's domain reason (e.g. "INVALID_INPUT", "STALE_POLICY") from the
    'mor-error-reason' trailer, or None when the server sent none."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_REASON_KEY:
            return value if isinstance(value, str) else value.decode()
    return None


def _method_of(fn: Any) -> tuple[str, str]:
    raw = getattr(fn, "_method", b"")
    return split_method(raw.decode() if isinstance(raw, bytes) else str(raw))


def backoff_delay(attempt: int, backoff: float, max_backoff: float, jitter: float, rng: Callable[[], float]) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, capped, with
    +-`jitter` relative noise so many clients do not retry in lockstep."""
    delay = min(max_backoff, backoff * (2 ** attempt))
    return max(0.0, delay * (1.0 + jitter * (2.0 * rng() - 1.0)))


async def call_with_retry(
    fn: Callable[..., Awaitable[Resp]],
    request: Any,
    *,
    timeout: float,
    retries: int = 3,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    jitter: float = 0.2,
    retry_codes: Collection[grpc.StatusCode] = DEFAULT_RETRY_CODES,
    metadata: Sequence[tuple[str, str]] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> Resp:
    """Call a unary-unary stub method, retrying on `retry_codes`. Only for IDEMPOTENT calls
    (GetInfo, Score; never UpdateWeights or StartRun): a retried call may have run on the server.

    `timeout` is the deadline of each attempt, so the whole call takes at most about
    (retries + 1) * timeout plus the back-off waits. Any other status, or the last failure,
    is raised as the grpc.aio.AioRpcError it was.
    """
    if timeout <= 0:
        raise ValueError("timeout must be > 0: every call has a deadline")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    service, method = _method_of(fn)
    attempt = 0
    while True:
        try:
            return await fn(request, timeout=timeout, metadata=metadata)
        except aio.AioRpcError as err:
            code = err.code()
            if code not in retry_codes or attempt >= retries:
                raise
            delay = backoff_delay(attempt, backoff, max_backoff, jitter, rng)
            metrics.GRPC_CLIENT_RETRIES.labels(service, method, code.name).inc()
            log.warning("%s/%s failed with %s (%s); retry %d/%d in %.2fs", service, method, code.name,
                        err.details(), attempt + 1, retries, delay)
            attempt += 1
            await sleep(delay)


__all__ = [
    "DEFAULT_RETRY_CODES",
    "backoff_delay",
    "call_with_retry",
    "create_channel",
    "error_reason",
    "metadata_interceptors",
    "read_token",
]
