"""Request bytes that do not parse as the method's message become INVALID_ARGUMENT (reason
UNDECODABLE_REQUEST) raised inside the exception mapper, instead of grpc's UNKNOWN and a traceback per call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio

from services.common import errors
from services.common.grpc.handlers import HANDLER_FACTORIES, Behavior, handler_shape, split_method


class _Undecodable:
    """Stands in for a request message whose bytes did not parse (see guard_decoding)."""

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


def guard_decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler with a deserializer that cannot raise, and a behaviour that raises
    InvalidInput (inside the exception mapper) when it meets a request that did not parse."""
    shape = handler_shape(handler)
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

        guarded: Behavior = guarded_gen
    else:
        async def guarded_call(arg: Any, context: aio.ServicerContext) -> Any:
            result = behavior(check(arg), context)
            return await result if inspect.isawaitable(result) else result

        guarded = guarded_call
    return HANDLER_FACTORIES[shape](guarded, safe, handler.response_serializer)
