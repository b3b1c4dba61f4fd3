"""Shared gRPC serving and client infrastructure (grpc.aio), used by every MoR service.

Domain-free: nothing here knows reward models or policies.

    credentials   TLS / mTLS / plaintext credentials and channel options from config sections
    interceptors  auth -> request id -> metrics -> exception-to-status server interceptors
    auth          AuthInterceptor: caller identity (token, client certificate), per-method authorisation
    decoding      undecodable request bytes -> INVALID_ARGUMENT instead of UNKNOWN
    handlers      wrapping a handler's behaviour whatever its shape, aborting handlers
    server        GrpcService: health, reflection, binding, readiness, graceful stop, signals;
                  serving(): start/stop in-process servers as one async context
    client        channels from an EndpointSection, bearer tokens, call_with_retry
    status        domain errors (services.common.errors) as grpc.StatusCode and caller-visible message
"""

from services.common.grpc.auth import current_caller
from services.common.grpc.client import (
    DEFAULT_RETRY_CODES,
    call_with_retry,
    create_channel,
    error_reason,
    read_token,
)
from services.common.grpc.interceptors import current_request_id
from services.common.grpc.server import GrpcService, service_name, serving

__all__ = [
    "DEFAULT_RETRY_CODES",
    "GrpcService",
    "call_with_retry",
    "create_channel",
    "current_caller",
    "current_request_id",
    "error_reason",
    "read_token",
    "service_name",
    "serving",
]
