"""grpc.aio handler plumbing the server interceptors share: re-wrap a handler's behaviour keeping its
shape (unary-unary, unary-stream, stream-unary, stream-stream), and prebuilt handlers that only abort.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def split_method(full_method: str) -> tuple[str, str]:
    """'/mor.v1.RewardNode/Score' -> ('mor.v1.RewardNode', 'Score')."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return (service or "unknown"), (method or "unknown")


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


Behavior = Callable[..., Any]
Wrap = Callable[[Behavior, bool], Behavior]


def rewrap(handler: grpc.RpcMethodHandler, wrap: Wrap) -> grpc.RpcMethodHandler:
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


def around(
    behavior: Behavior,
    streaming_out: bool,
    on_start: Callable[[aio.ServicerContext], Any],
    on_error: Callable[[BaseException, aio.ServicerContext, Any], Awaitable[None]],
    on_end: Callable[[aio.ServicerContext, Any], None],
) -> Behavior:
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


HANDLER_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def handler_shape(handler: grpc.RpcMethodHandler | None) -> str:
    """The handler's shape, a key of HANDLER_FACTORIES (unary-unary when the method is unknown)."""
    if handler is None or handler.unary_unary:
        return "unary_unary"
    if handler.unary_stream:
        return "unary_stream"
    if handler.stream_unary:
        return "stream_unary"
    return "stream_stream"


def aborting_handler(shape: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the given shape that only aborts with (code, message). Requests stay
    undeserialised bytes: nothing of an unauthenticated request is parsed."""

    async def abort(_request_or_iterator: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    return HANDLER_FACTORIES[shape](abort)
