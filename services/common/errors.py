"""Domain errors and the one table that turns them into gRPC status codes.

Domain code raises these (it never imports grpc for error handling); the server interceptor calls
`status_for` to pick the status. A MorError's message is written for the caller and is sent as is;
any other exception is a bug, so its text (which may hold paths or data) stays in the server log.
`reason` is a stable UPPER_SNAKE identifier a client can branch on without parsing messages.
"""

from __future__ import annotations

import grpc

GENERIC_INTERNAL_MESSAGE = "internal error"
SHOWN_CHARS = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value) for an error message, cut to about `limit` characters: a message names what was
    wrong, but never echoes caller input whole (a 90 KB mime_type would make the status unsendable)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}...{size}"


class MorError(Exception):
    """Base of all domain errors. Not raised itself: raise the subclass that says what went wrong."""

    reason: str = "MOR_ERROR"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        # A per-instance reason refines the class one (e.g. "IMAGE_TOO_LARGE" for InvalidInput).
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args and self.args[0] else self.reason


class InvalidInput(MorError):
    """The request breaks a documented rule or limit; retrying it unchanged cannot succeed."""

    reason = "INVALID_INPUT"


class Overloaded(MorError):
    """The server is at capacity (queue full); the caller should back off and retry."""

    reason = "OVERLOADED"


class Unauthenticated(MorError):
    """Credentials are missing, malformed, expired or unknown."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(MorError):
    """Credentials are valid but this caller may not do this."""

    reason = "PERMISSION_DENIED"


class NotReady(MorError):
    """The service is loading or draining; another replica or a later retry may succeed."""

    reason = "NOT_READY"


class NotFound(MorError):
    """An id (run, node, ...) is unknown."""

    reason = "NOT_FOUND"


class AlreadyExists(MorError):
    """An id the caller chose (run id, ...) is already taken."""

    reason = "ALREADY_EXISTS"


class VersionMismatch(MorError):
    """The request is well formed but does not fit the server's current version or state."""

    reason = "VERSION_MISMATCH"


class StalePolicy(VersionMismatch):
    """Weights or samples are from an older policy version than the one required."""

    reason = "STALE_POLICY"


class TimedOut(MorError):
    """The server stopped waiting for the caller (a stalled upload); retrying may succeed."""

    reason = "TIMED_OUT"


class ChecksumMismatch(MorError):
    """A transferred payload does not match its declared sha256 (corrupted in transit)."""

    reason = "CHECKSUM_MISMATCH"


# The one place that decides status codes. Lookup follows the MRO, so a subclass inherits its
# parent's code unless listed here. MorError itself is deliberately absent: a bare MorError is
# treated as a bug (INTERNAL, generic message), which keeps domain code honest.
STATUS_CODES: dict[type[MorError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    VersionMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    ChecksumMismatch: grpc.StatusCode.DATA_LOSS,
    TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(exc_type: type[BaseException]) -> grpc.StatusCode | None:
    """The mapped status code of an exception class, or None when it is not a mapped domain error."""
    for klass in exc_type.__mro__:
        if klass in STATUS_CODES:
            return STATUS_CODES[klass]
    return None


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, message) to send for `exc`; unmapped exceptions become INTERNAL, generically."""
    code = code_for(type(exc))
    if code is None or not isinstance(exc, MorError):
        return grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE
    return code, exc.message


__all__ = [
    "GENERIC_INTERNAL_MESSAGE",
    "SHOWN_CHARS",
    "STATUS_CODES",
    "AlreadyExists",
    "ChecksumMismatch",
    "InvalidInput",
    "MorError",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PermissionDenied",
    "StalePolicy",
    "TimedOut",
    "Unauthenticated",
    "VersionMismatch",
    "code_for",
    "shown",
    "status_for",
]
