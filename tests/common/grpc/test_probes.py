"""The metrics side port of a running GrpcService, read with real HTTP GETs."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request

import grpc

from services.common.config import MetricsSection
from services.common.wire import reward_node_pb2_grpc


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def _aget(port: int, path: str) -> tuple[int, str]:
    # The server runs on this event loop, so the blocking client runs in a thread.
    return await asyncio.to_thread(_get, port, path)


def test_metrics_endpoint_shows_calls_by_code(serve, score, arun) -> None:
    async def scenario() -> str:
        async with serve(metrics=MetricsSection(port=0)) as running:
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                for prompt in ("ok", "ok", "invalid"):
                    try:
                        await stub.Score(score(prompt), timeout=3)
                    except grpc.aio.AioRpcError:
                        pass
            status, body = await _aget(running.service.metrics_port, "/metrics")
            assert status == 200
            return body

    body = arun(scenario())

    codes = set(re.findall(
        r'^mor_grpc_server_requests_total\{code="(\w+)",method="Score",service="mor\.v1\.RewardNode"\} [1-9]',
        body, flags=re.M,
    ))
    assert {"OK", "INVALID_ARGUMENT"} <= codes
    assert "mor_grpc_server_latency_seconds_bucket{" in body


def test_readyz_follows_readiness_and_drain(serve, arun) -> None:
    async def scenario() -> list[int]:
        async with serve(metrics=MetricsSection(port=0), ready=False) as running:
            port = running.service.metrics_port
            seen = [(await _aget(port, "/readyz"))[0], (await _aget(port, "/livez"))[0]]
            await running.service.set_ready()
            seen.append((await _aget(port, "/readyz"))[0])
            await running.service.set_ready(False)
            seen.append((await _aget(port, "/readyz"))[0])
            await running.service.set_ready(True)
            await running.service.stop(grace=0)
            try:
                await _aget(port, "/livez")
                seen.append(200)
            except OSError:
                seen.append(-1)  # the side port closes with the server
            return seen

    assert arun(scenario()) == [503, 200, 200, 503, -1]
