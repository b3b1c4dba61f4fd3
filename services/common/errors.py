"""Domain errors and the one table that names their gRPC status codes.

Domain code raises these and never imports grpc: the table holds status *names*, and
services.common.grpc.status turns them into grpc.StatusCode for the server interceptor. A MorError's message is written for the caller and is sent as is;
any other exception is a bug, so its text (which may hold paths or data) stays in the server log.
`reason` is a stable UPPER_SNAKE identifier a client can branch on without parsing messages.
"""

from __future__ import annotations

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


# The one place that decides status codes (by gRPC status name). Lookup follows the MRO, so a
# subclass inherits its parent's code unless listed here. MorError itself is deliberately absent: a
# bare MorError is treated as a bug (INTERNAL, generic message), which keeps domain code honest.
STATUS_NAMES: dict[type[MorError], str] = {
    InvalidInput: "INVALID_ARGUMENT",
    Overloaded: "RESOURCE_EXHAUSTED",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    NotReady: "UNAVAILABLE",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    VersionMismatch: "FAILED_PRECONDITION",
    ChecksumMismatch: "DATA_LOSS",
    TimedOut: "DEADLINE_EXCEEDED",
}


def status_name_of(exc_type: type[BaseException]) -> str | None:
    """The mapped status name of an exception class, or None when it is not a mapped domain error."""
    for klass in exc_type.__mro__:
        if klass in STATUS_NAMES:
            return STATUS_NAMES[klass]
    return None


def status_name(exc: BaseException) -> str:
    """The status name `exc` is answered with: its mapped one, or INTERNAL for anything else."""
    name = status_name_of(type(exc))
    return name if name is not None and isinstance(exc, MorError) else "INTERNAL"


__all__ = [
    "GENERIC_INTERNAL_MESSAGE",
    "SHOWN_CHARS",
    "STATUS_NAMES",
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
    "shown",
    "status_name",
    "status_name_of",
]
