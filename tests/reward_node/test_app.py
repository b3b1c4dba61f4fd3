"""The node's life cycle and load behaviour through real servers: health while loading, serving and
draining; graceful shutdown (also on SIGTERM); dynamic batching across callers; overload."""
from __future__ import annotations

import asyncio
import os
import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ConfigError
from services.common.grpc import error_reason
from services.reward_node.app import build_app
from services.reward_node.client import RewardNodeClient

from .conftest import FakeRM, fake_loaded, node_settings

SERVICE = "mor.v1.RewardNode"


async def _wait_bound(app) -> int:
    for _ in range(500):
        try:
            return app.port
        except RuntimeError:
            await asyncio.sleep(0.01)
    raise AssertionError("server never bound")


def test_health_not_serving_while_loading_then_serving_then_not_serving_when_draining(arun) -> None:
    gate = threading.Event()
    rm = FakeRM(gate=gate)  # the warm-up batch during loading blocks until the gate opens
    app = build_app(node_settings(), loaded=fake_loaded(rm))

    async def scenario():
        starting = asyncio.ensure_future(app.start())
        port = await _wait_bound(app)
        seen = {}
        async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=0) as client:
            await asyncio.to_thread(rm.running.wait, 10)
            seen["loading"] = (await client.health(), await client.health(""), (await client.info()).serving_state)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score("q", ["a"])
            seen["score_while_loading"] = (err.value.code(), error_reason(err.value))
            gate.set()
            await starting
            seen["serving"] = (await client.health(), await client.health(""), (await client.info()).serving_state)
            watch = health_pb2_grpc.HealthStub(client._channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            first = (await watch.read()).status
            stopping = asyncio.ensure_future(app.stop(grace=1.0))
            seen["watch"] = (first, (await watch.read()).status)
            await stopping
        return seen

    seen = arun(scenario())

    assert seen["loading"] == ("NOT_SERVING", "NOT_SERVING", "loading")
    assert seen["score_while_loading"] == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")
    assert seen["serving"] == ("SERVING", "SERVING", "serving")
    assert seen["watch"] == (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


def test_client_retries_score_until_the_node_has_loaded(arun) -> None:
    gate = threading.Event()
    rm = FakeRM(gate=gate)
    app = build_app(node_settings(), loaded=fake_loaded(rm))

    async def scenario():
        starting = asyncio.ensure_future(app.start())
        port = await _wait_bound(app)
        await asyncio.to_thread(rm.running.wait, 10)
        asyncio.get_running_loop().call_later(0.3, gate.set)
        async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=8,
                                            backoff_s=0.05, max_backoff_s=0.2) as client:
            reply = await client.score("q", ["abc", "de"])
        await starting
        await app.stop(0)
        return reply.scores

    assert arun(scenario()) == [3.0, 2.0]


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones(node, arun) -> None:
    rm = FakeRM(delay_s=0.6)

    async def scenario():
        async with node(node_settings(), fake_loaded(rm)) as running, running.client() as client:
            await client.score("warm", ["x"])
            slow = asyncio.ensure_future(client.score("q", ["abcd", "ef"], timeout=10))
            await asyncio.sleep(0.2)  # the slow call is inside the model now
            stopping = asyncio.ensure_future(running.app.stop(grace=5.0))
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.score("late", ["x"], timeout=5)
            reply = await slow
            await stopping
            return reply.scores, refused.value.code(), running.app.core.state

    scores, refused, state = arun(scenario())

    assert scores == [4.0, 2.0]
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert state == "stopped"


def test_sigterm_drains_in_flight_calls_then_stops(arun) -> None:
    rm = FakeRM(delay_s=0.5)
    app = build_app(node_settings(), loaded=fake_loaded(rm))

    async def scenario():
        serving = asyncio.ensure_future(app.run())
        port = await _wait_bound(app)
        while not app.service.is_ready():
            await asyncio.sleep(0.01)
        async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=0) as client:
            slow = asyncio.ensure_future(client.score("q", ["abc"], timeout=10))
            await asyncio.sleep(0.15)
            os.kill(os.getpid(), signal.SIGTERM)
            reply = await slow
        await asyncio.wait_for(serving, 10)
        return reply.scores, app.core.state

    assert arun(scenario()) == ([3.0], "stopped")


def test_concurrent_requests_coalesce_into_shared_batches(node, arun) -> None:
    rm = FakeRM(delay_s=0.05)
    settings = node_settings(batching={"max_batch_size": 64, "max_wait_ms": 100})

    async def scenario():
        async with node(settings, fake_loaded(rm)) as running, running.client() as client:
            replies = await asyncio.gather(*(client.score(f"q{i}", ["a" * (i + 1), "bb"]) for i in range(8)))
            return [r.scores for r in replies]

    scores = arun(scenario())

    assert scores == [[float(i + 1), 2.0] for i in range(8)]
    assert max(rm.served_batches()) > 2  # one request has 2 answers: a bigger batch mixes requests
    assert sum(rm.served_batches()) == 16 and len(rm.served_batches()) < 8


def test_full_queue_answers_resource_exhausted(node, arun) -> None:
    gate = threading.Event()
    rm = FakeRM(gate=gate)
    settings = node_settings(batching={"max_batch_size": 4, "max_wait_ms": 0, "max_queue": 4},
                             limits={"max_responses": 4})

    async def scenario():
        gate.set()
        async with node(settings, fake_loaded(rm)) as running, running.client() as client:
            gate.clear()
            rm.running.clear()
            first = asyncio.ensure_future(client.score("a", ["1", "2", "3", "4"]))  # runs (held by the gate)
            await asyncio.to_thread(rm.running.wait, 10)
            second = asyncio.ensure_future(client.score("b", ["1", "2", "3"]))  # waits in the queue
            while running.app.core.queue_depth < 3:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score("c", ["1", "2"])
            gate.set()
            done = await asyncio.gather(first, second)
            return err.value, [len(r.scores) for r in done]

    err, done = arun(scenario())

    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(err) == "OVERLOADED" and "batching.max_queue=4" in err.details()
    assert done == [4, 3]  # admitted work still completes


def test_start_fails_early_on_unusable_settings(arun, tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.checkpoint: required"):
        arun(build_app(node_settings()).start())
    with pytest.raises(ConfigError, match="is not an RM checkpoint"):
        arun(build_app(node_settings(model={"checkpoint": str(tmp_path)})).start())
    with pytest.raises(ConfigError, match="batching.max_queue"):
        arun(build_app(node_settings(batching={"max_queue": 8}), loaded=fake_loaded()).start())
    with pytest.raises(ConfigError, match="tls.cert and tls.key are required"):
        arun(build_app(node_settings(tls={"insecure": False}), loaded=fake_loaded()).start())
