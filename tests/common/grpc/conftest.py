"""Fixtures for the gRPC infrastructure tests: a dev PKI, tiny fake servicers, a server runner.

The servicers are trivial stand-ins defined here (no reward model, no policy): they exist to drive
the shared serving code through every handler shape and failure path. pytest-asyncio is not used:
each test runs its scenario with `arun(coro)`, which bounds it with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common import certs, errors
from services.common.config import AuthSection, EndpointSection, MetricsSection, ServerSection, TLSSection
from services.common.grpc import GrpcService, create_channel, current_caller, current_request_id, service_name
from services.common.wire import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    policy_sampler_pb2,
    policy_sampler_pb2_grpc,
    reward_node_pb2,
    reward_node_pb2_grpc,
)

SCENARIO_TIMEOUT_S = 20.0


@pytest.fixture
def arun() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run one async scenario to completion, failing it after SCENARIO_TIMEOUT_S."""

    def run(coro: Coroutine[Any, Any, Any], timeout: float = SCENARIO_TIMEOUT_S) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server: certs.CertPaths          # "node", SANs 127.0.0.1 + localhost
    client: certs.CertPaths          # "orchestrator", client cert from the same CA
    rogue_ca: Path
    rogue_client: certs.CertPaths    # "orchestrator", signed by another CA
    tokens_file: Path                # node-tokens.yaml: orchestrator and intruder
    orchestrator_token: str
    intruder_token: str


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    rogue = tmp_path_factory.mktemp("rogue-pki")
    ca = certs.init_ca(d)
    server = certs.issue(d, "node")
    client = certs.issue(d, "orchestrator", client=True)
    rogue_ca = certs.init_ca(rogue)
    rogue_client = certs.issue(rogue, "orchestrator", client=True)
    orch = certs.issue_token(d, "orchestrator", server="node")
    intruder = certs.issue_token(d, "intruder", server="intruder-node")
    # The intruder's token is valid on "node" too (same tokens file) but it is not an allowed caller.
    certs.issue_token(d, "intruder", server="node", token=intruder)
    return Pki(d, ca.cert, server, client, rogue_ca.cert, rogue_client, certs.tokens_path(d, "node"), orch, intruder)


class FakeRewardNode(reward_node_pb2_grpc.RewardNodeServicer):
    """Score behaviour is chosen by the prompt:
    "ok" scores 1.0 per response; "slow" waits `slow_s` (and sets `started`); "invalid" raises
    InvalidInput; "boom" raises RuntimeError; "flaky" raises NotReady (UNAVAILABLE) for its first
    `flaky_failures` calls; "abort" aborts itself with NOT_FOUND; "whoami" answers with the caller
    and request id in model_version; "echo:..." raises InvalidInput quoting the whole prompt (a
    careless handler echoing unbounded input)."""

    def __init__(self, slow_s: float = 1.0, flaky_failures: int = 2) -> None:
        self.slow_s = slow_s
        self.flaky_failures = flaky_failures
        self.calls: dict[str, int] = {}
        self.started = asyncio.Event()

    async def Score(self, request: Any, context: Any) -> Any:
        prompt = request.prompt
        self.calls[prompt] = self.calls.get(prompt, 0) + 1
        if prompt == "slow":
            self.started.set()
            await asyncio.sleep(self.slow_s)
        elif prompt == "invalid":
            raise errors.InvalidInput("too many responses: 9 > 8")
        elif prompt == "boom":
            raise RuntimeError("secret detail /private/path")
        elif prompt.startswith("echo:"):
            raise errors.InvalidInput(f"prompt {prompt!r} is not accepted")
        elif prompt == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such group")
        elif prompt == "flaky" and self.calls[prompt] <= self.flaky_failures:
            raise errors.NotReady("model loading")
        elif prompt == "whoami":
            return reward_node_pb2.ScoreResponse(
                model_version=f"{current_caller()}|{current_request_id()}", node_id="fake"
            )
        return reward_node_pb2.ScoreResponse(
            scores=[reward_node_pb2.Score(overall=1.0) for _ in request.responses], node_id="fake"
        )

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return reward_node_pb2.RewardNodeGetInfoResponse(info=reward_node_pb2.NodeInfo(node_id="fake"))


class FakeSampler(policy_sampler_pb2_grpc.PolicySamplerServicer):
    """UpdateWeights (stream-unary) counts data bytes; a chunk b"bad" raises InvalidInput."""

    async def UpdateWeights(self, request_iterator: Any, context: Any) -> Any:
        received = 0
        async for chunk in request_iterator:
            if chunk.data == b"bad":
                raise errors.InvalidInput("chunk rejected")
            received += len(chunk.data)
        return policy_sampler_pb2.UpdateWeightsResponse(version=1, applied=True, bytes_received=received)


class FakeOrchestrator(orchestrator_pb2_grpc.OrchestratorServicer):
    """WatchRun (unary-stream): three events, as an async generator; run "bad" fails after one
    event, run "unknown" fails before any; run "writer" uses context.write instead of yield."""

    async def WatchRun(self, request: Any, context: Any) -> Any:
        if request.run_id == "writer":
            for i in range(3):
                await context.write(orchestrator_pb2.WatchRunResponse(event=orchestrator_pb2.RunEvent(sequence=i)))
            return
        async for item in self._events(request.run_id):
            yield item

    async def _events(self, run_id: str) -> AsyncIterator[Any]:
        if run_id == "unknown":
            raise errors.NotFound(f"run {run_id}")
        for i in range(3):
            if run_id == "bad" and i == 1:
                raise errors.NotReady("run store unavailable")
            yield orchestrator_pb2.WatchRunResponse(event=orchestrator_pb2.RunEvent(sequence=i, run_id=run_id))


REWARD_NODE = service_name(reward_node_pb2, "RewardNode")
SAMPLER = service_name(policy_sampler_pb2, "PolicySampler")
ORCHESTRATOR = service_name(orchestrator_pb2, "Orchestrator")


@dataclass
class Running:
    service: GrpcService
    node: FakeRewardNode

    def endpoint(self, **kwargs: Any) -> EndpointSection:
        kwargs.setdefault("tls", TLSSection(insecure=True))
        return EndpointSection(address=f"127.0.0.1:{self.service.port}", **kwargs)

    def channel(self, **kwargs: Any) -> grpc.aio.Channel:
        server_name = kwargs.pop("server_name", None)
        return create_channel(self.endpoint(**kwargs), server_name=server_name)


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """`async with serve(tls=..., auth=..., ...) as running:` a started GrpcService with the fake
    servicers on 127.0.0.1:0 (plaintext unless tls is given), stopped (grace 0) on exit."""

    @contextlib.asynccontextmanager
    async def run(
        *,
        tls: TLSSection | None = None,
        auth: AuthSection | None = None,
        server: ServerSection | None = None,
        metrics: MetricsSection | None = None,
        ready: bool = True,
        node: FakeRewardNode | None = None,
    ) -> AsyncIterator[Running]:
        node = node or FakeRewardNode()
        service = GrpcService(
            "test",
            server=server or ServerSection(host="127.0.0.1", port=0, grace_s=2.0),
            tls=tls or TLSSection(insecure=True),
            auth=auth,
            metrics=metrics,
        )
        service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server, node, REWARD_NODE)
        service.add_servicer(policy_sampler_pb2_grpc.add_PolicySamplerServicer_to_server, FakeSampler(), SAMPLER)
        service.add_servicer(orchestrator_pb2_grpc.add_OrchestratorServicer_to_server, FakeOrchestrator(), ORCHESTRATOR)
        await service.start()
        if ready:
            await service.set_ready()
        try:
            yield Running(service, node)
        finally:
            await service.stop(0)

    return run


def score_request(prompt: str = "ok", n: int = 2) -> Any:
    return reward_node_pb2.ScoreRequest(prompt=prompt, responses=[f"answer {i}" for i in range(n)])


@pytest.fixture
def score() -> Callable[..., Any]:
    """score(prompt, n) -> a ScoreRequest."""
    return score_request
