"""Domain errors as gRPC statuses: services.common.errors names each error's status; this turns the
name into a grpc.StatusCode and picks the message a caller may see."""
from __future__ import annotations

import grpc

from services.common import errors


def code_for(exc_type: type[BaseException]) -> grpc.StatusCode | None:
    """The mapped status code of an exception class, or None when it is not a mapped domain error."""
    name = errors.status_name_of(exc_type)
    return None if name is None else grpc.StatusCode[name]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, message) to send for `exc`; unmapped exceptions become INTERNAL, generically."""
    code = code_for(type(exc))
    if code is None or not isinstance(exc, errors.MorError):
        return grpc.StatusCode.INTERNAL, errors.GENERIC_INTERNAL_MESSAGE
    return code, exc.message


__all__ = ["code_for", "status_for"]
