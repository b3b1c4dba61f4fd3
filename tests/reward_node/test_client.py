"""The typed client: deadlines, which calls are retried, and typed results."""
from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from services.common import metrics
from services.reward_node.app import build_app
from services.reward_node.client import NodeInfo, RewardNodeClient, ScoreGroup

from .conftest import FakeRM, fake_loaded, node_settings


def _retries(method: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "mor_grpc_client_retry_attempts_total",
        {"service": "mor.v1.RewardNode", "method": method, "code": "UNAVAILABLE"},
    ) or 0.0


def test_score_batch_is_not_retried_but_score_is(arun) -> None:
    gate = threading.Event()
    rm = FakeRM(gate=gate)
    app = build_app(node_settings(), loaded=fake_loaded(rm))

    async def scenario():
        starting = asyncio.ensure_future(app.start())
        while True:
            try:
                port = app.port
                break
            except RuntimeError:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(rm.running.wait, 10)
        before = (_retries("ScoreBatch"), _retries("Score"))
        async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=2, backoff_s=0.01) as client:
            with pytest.raises(grpc.aio.AioRpcError) as batch_err:
                await client.score_batch([ScoreGroup("q", ["a"])])
            with pytest.raises(grpc.aio.AioRpcError) as score_err:
                await client.score("q", ["a"])
        gate.set()
        await starting
        await app.stop(0)
        after = (_retries("ScoreBatch"), _retries("Score"))
        return batch_err.value.code(), score_err.value.code(), [a - b for a, b in zip(after, before, strict=True)]

    batch_code, score_code, retried = arun(scenario())

    assert batch_code == score_code == grpc.StatusCode.UNAVAILABLE
    assert retried == [0.0, 2.0]


def test_every_call_has_a_deadline(node, arun) -> None:
    rm = FakeRM(delay_s=0.5)

    async def scenario():
        async with node(node_settings(), fake_loaded(rm)) as running, running.client() as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score("q", ["a"], timeout=0.2)
            return err.value.code()

    assert arun(scenario()) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_results_are_typed_dataclasses(node, arun) -> None:
    async def scenario():
        async with node() as running, running.client() as client:
            return await client.info(), await client.score_batch([ScoreGroup("q", ["ab"], group_id="x")],
                                                                  return_parts=True)

    info, batch = arun(scenario())

    assert isinstance(info, NodeInfo) and info.serving_state == "serving" and info.model_version == "fake-1"
    assert batch.groups[0].group_id == "x" and batch.groups[0].scores == [2.0]
    assert batch.groups[0].parts == [{"rm": 2.0}]
