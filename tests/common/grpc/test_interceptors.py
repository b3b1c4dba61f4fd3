"""Exception-to-status mapping, request ids and per-call metrics, for every handler shape."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from services.common import metrics
from services.common.errors import GENERIC_INTERNAL_MESSAGE
from services.common.grpc import error_reason
from services.common.grpc.interceptors import MAX_STATUS_MESSAGE_CHARS
from services.common.wire import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    policy_sampler_pb2,
    policy_sampler_pb2_grpc,
    reward_node_pb2_grpc,
)


def _count(service: str, method: str, code: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "mor_grpc_server_requests_total", {"service": service, "method": method, "code": code}
    )
    return value or 0.0


async def _settled(done, timeout: float = 5.0) -> None:
    """Wait for the server's side of a call: the client has its status as soon as it is sent, the
    interceptor's bookkeeping (metrics, the log line) runs just after; leaving serve() earlier would
    stop the server under it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not done() and loop.time() < end:
        await asyncio.sleep(0.01)


def test_domain_error_becomes_its_status_with_message_and_reason(serve, score, arun) -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        async with serve() as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("invalid"), timeout=3)
                return err.value

    err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "too many responses: 9 > 8"
    assert error_reason(err) == "INVALID_INPUT"


def test_unknown_exception_is_internal_and_generic_with_traceback_logged(serve, score, arun, caplog) -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        async with serve() as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("boom"), timeout=3)
                await _settled(lambda: any(r.exc_info for r in caplog.records))
                return err.value

    with caplog.at_level(logging.ERROR, logger="services.common.grpc.interceptors"):
        err = arun(scenario())

    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == GENERIC_INTERNAL_MESSAGE
    assert "secret" not in (err.debug_error_string() or "")
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret detail" in str(logged[0].exc_info[1])


def test_a_handler_may_abort_by_itself(serve, score, arun) -> None:
    before = _count("mor.v1.RewardNode", "Score", "NOT_FOUND")

    async def scenario() -> tuple[grpc.StatusCode, str]:
        async with serve() as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("abort"), timeout=3)
                await _settled(lambda: _count("mor.v1.RewardNode", "Score", "NOT_FOUND") > before)
                return err.value.code(), err.value.details()

    assert arun(scenario()) == (grpc.StatusCode.NOT_FOUND, "no such group")
    assert _count("mor.v1.RewardNode", "Score", "NOT_FOUND") == before + 1


def test_calls_are_counted_by_code(serve, score, arun) -> None:
    before = {code: _count("mor.v1.RewardNode", "Score", code) for code in ("OK", "INVALID_ARGUMENT", "INTERNAL")}

    async def scenario() -> None:
        async with serve() as running:
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                for prompt in ("ok", "ok", "ok", "invalid", "boom"):
                    try:
                        await stub.Score(score(prompt), timeout=3)
                    except grpc.aio.AioRpcError:
                        pass
                await _settled(lambda: _count("mor.v1.RewardNode", "Score", "INTERNAL") > before["INTERNAL"])

    arun(scenario())

    after = {code: _count("mor.v1.RewardNode", "Score", code) for code in before}
    assert {code: after[code] - before[code] for code in before} == {"OK": 3, "INVALID_ARGUMENT": 1, "INTERNAL": 1}
    in_flight = metrics.REGISTRY.get_sample_value(
        "mor_grpc_server_in_flight_requests", {"service": "mor.v1.RewardNode", "method": "Score"}
    )
    assert in_flight == 0
    observed = metrics.REGISTRY.get_sample_value(
        "mor_grpc_server_latency_seconds_count", {"service": "mor.v1.RewardNode", "method": "Score"}
    )
    assert observed >= 5


@pytest.mark.parametrize(
    ("run_id", "expected_events", "code"),
    [
        ("r1", 3, grpc.StatusCode.OK),
        ("writer", 3, grpc.StatusCode.OK),          # a coroutine handler using context.write
        ("bad", 1, grpc.StatusCode.UNAVAILABLE),    # fails mid-stream, after one event
        ("unknown", 0, grpc.StatusCode.NOT_FOUND),  # fails before the first event
    ],
)
def test_server_streaming_handlers_are_mapped_and_counted(serve, arun, run_id, expected_events, code) -> None:
    before = _count("mor.v1.Orchestrator", "WatchRun", code.name)

    async def scenario() -> tuple[int, grpc.StatusCode]:
        async with serve() as running:
            async with running.channel() as ch:
                call = orchestrator_pb2_grpc.OrchestratorStub(ch).WatchRun(
                    orchestrator_pb2.WatchRunRequest(run_id=run_id), timeout=3
                )
                events = 0
                try:
                    async for _ in call:
                        events += 1
                except grpc.aio.AioRpcError as err:
                    return events, err.code()
                return events, await call.code()

    events, got = arun(scenario())

    assert (events, got) == (expected_events, code)
    assert _count("mor.v1.Orchestrator", "WatchRun", code.name) == before + 1


@pytest.mark.parametrize(
    ("chunks", "code"),
    [([b"ab", b"cde"], grpc.StatusCode.OK), ([b"ab", b"bad"], grpc.StatusCode.INVALID_ARGUMENT)],
)
def test_client_streaming_handlers_are_mapped_and_counted(serve, arun, chunks, code) -> None:
    before = _count("mor.v1.PolicySampler", "UpdateWeights", code.name)

    async def requests():
        for data in chunks:
            yield policy_sampler_pb2.UpdateWeightsRequest(data=data)

    async def scenario() -> grpc.StatusCode:
        async with serve() as running:
            async with running.channel() as ch:
                try:
                    reply = await policy_sampler_pb2_grpc.PolicySamplerStub(ch).UpdateWeights(requests(), timeout=3)
                except grpc.aio.AioRpcError as err:
                    return err.code()
                assert reply.bytes_received == 5
                return grpc.StatusCode.OK

    assert arun(scenario()) == code
    assert _count("mor.v1.PolicySampler", "UpdateWeights", code.name) == before + 1


def test_request_id_is_taken_from_metadata_or_made(serve, score, arun) -> None:
    async def scenario() -> tuple[str, str, str]:
        async with serve() as running:
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                given = await stub.Score(score("whoami"), timeout=3, metadata=(("x-request-id", "step-7.node-a"),))
                made = await stub.Score(score("whoami"), timeout=3)
                hostile = await stub.Score(score("whoami"), timeout=3, metadata=(("x-request-id", "a b;" + "c" * 200),))
                return given.model_version, made.model_version, hostile.model_version

    given, made, hostile = arun(scenario())

    assert given == "None|step-7.node-a"  # auth is off here, so no caller
    assert len(made.split("|")[1]) == 32
    assert len(hostile.split("|")[1]) == 32  # an unsafe id is replaced, never logged as sent


# Bytes that are no protobuf message: field 15, wire type 7 (no such wire type).
GARBAGE = b"\x7f\xff\xff\xff"


def test_undecodable_unary_request_is_invalid_argument_with_one_log_line(serve, arun, caplog) -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        async with serve() as running:
            async with running.channel() as ch:
                raw = ch.unary_unary("/mor.v1.RewardNode/Score", request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(GARBAGE, timeout=3)
                return err.value

    with caplog.at_level(logging.INFO):
        err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err) == "UNDECODABLE_REQUEST"
    assert "Score request message" in err.details()
    about_it = [r for r in caplog.records if "Score" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(about_it) == 1 and about_it[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_undecodable_message_in_a_client_stream_is_invalid_argument(serve, arun) -> None:
    async def requests():
        yield policy_sampler_pb2.UpdateWeightsRequest(data=b"ok").SerializeToString()
        yield GARBAGE

    async def scenario() -> grpc.aio.AioRpcError:
        async with serve() as running:
            async with running.channel() as ch:
                raw = ch.stream_unary("/mor.v1.PolicySampler/UpdateWeights", request_serializer=None,
                                      response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(requests(), timeout=3)
                return err.value

    err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err) == "UNDECODABLE_REQUEST"


def test_a_message_echoing_huge_input_is_cut_and_still_sent(serve, score, arun) -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        async with serve() as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("echo:" + "x" * 100_000), timeout=3)
                return err.value

    err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED: the status was sendable
    assert len(err.details()) <= MAX_STATUS_MESSAGE_CHARS
    assert err.details().startswith("prompt 'echo:xxx") and "more characters cut" in err.details()
    assert error_reason(err) == "INVALID_INPUT"
