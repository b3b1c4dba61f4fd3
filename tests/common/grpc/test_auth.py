"""Bearer-token auth in the server interceptor, over plaintext (metadata) and TLS (call credentials)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from services.common import metrics
from services.common.config import AuthSection, TLSSection
from services.common.grpc.auth import AuthInterceptor
from services.common.wire import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    policy_sampler_pb2,
    policy_sampler_pb2_grpc,
    reward_node_pb2_grpc,
)


def _server_auth(pki) -> AuthSection:
    return AuthSection(tokens_file=pki.tokens_file, allowed_callers=("orchestrator",))


def _client_auth(pki, who: str) -> AuthSection:
    token = {"orchestrator": pki.orchestrator_token, "intruder": pki.intruder_token, "forged": "not-a-token"}
    return AuthSection() if who == "nobody" else AuthSection(token=SecretStr(token[who]))


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("nobody", grpc.StatusCode.UNAUTHENTICATED),
        ("forged", grpc.StatusCode.UNAUTHENTICATED),
        ("intruder", grpc.StatusCode.PERMISSION_DENIED),
        ("orchestrator", grpc.StatusCode.OK),
    ],
)
def test_token_auth_over_plaintext(serve, pki, score, arun, who, expected) -> None:
    async def scenario() -> grpc.StatusCode:
        async with serve(auth=_server_auth(pki)) as running:
            async with running.channel(auth=_client_auth(pki, who)) as ch:
                try:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score(), timeout=3)
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

    assert arun(scenario()) == expected


def test_rejections_are_counted(serve, pki, score, arun) -> None:
    def rejected() -> float:
        return metrics.REGISTRY.get_sample_value(
            "mor_grpc_server_rejected_requests_total",
            {"service": "mor.v1.RewardNode", "method": "Score", "code": "UNAUTHENTICATED"},
        ) or 0.0

    async def scenario() -> None:
        async with serve(auth=_server_auth(pki)) as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score(), timeout=3)

    before = rejected()
    arun(scenario())

    assert rejected() == before + 1


def test_token_auth_over_mtls_uses_call_credentials(serve, pki, score, arun) -> None:
    server_tls = TLSSection(ca_cert=pki.ca, cert=pki.server.cert, key=pki.server.key, require_client_auth=True)
    client_tls = TLSSection(ca_cert=pki.ca, cert=pki.client.cert, key=pki.client.key)

    async def scenario() -> tuple[str, grpc.StatusCode]:
        async with serve(tls=server_tls, auth=_server_auth(pki)) as running:
            token_file = pki.dir / "orchestrator-to-node.token"  # written by issue_token(..., server="node")
            async with running.channel(tls=client_tls, auth=AuthSection(token_file=token_file)) as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                reply = await stub.Score(score("whoami"), timeout=3, metadata=(("x-request-id", "req-42"),))
            async with running.channel(tls=client_tls) as ch:
                try:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score(), timeout=3)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    code = err.code()
            return reply.model_version, code

    who, without_token = arun(scenario())

    assert who == "orchestrator|req-42"  # the handler sees the caller and the request id
    assert without_token == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open_without_token(serve, pki, arun) -> None:
    async def scenario() -> int:
        async with serve(auth=_server_auth(pki)) as running:
            async with running.channel() as ch:
                reply = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="mor.v1.RewardNode"), timeout=3
                )
                return reply.status

    assert arun(scenario()) == health_pb2.HealthCheckResponse.SERVING


def test_streaming_methods_are_rejected_in_their_own_shape(serve, pki, arun) -> None:
    async def chunks():
        yield policy_sampler_pb2.UpdateWeightsRequest(data=b"abc")

    async def scenario() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        async with serve(auth=_server_auth(pki)) as running:
            async with running.channel() as ch:
                with pytest.raises(grpc.aio.AioRpcError) as upload:
                    await policy_sampler_pb2_grpc.PolicySamplerStub(ch).UpdateWeights(chunks(), timeout=3)
                with pytest.raises(grpc.aio.AioRpcError) as watch:
                    call = orchestrator_pb2_grpc.OrchestratorStub(ch).WatchRun(
                        orchestrator_pb2.WatchRunRequest(run_id="r1"), timeout=3
                    )
                    async for _ in call:
                        pass
                return upload.value.code(), watch.value.code()

    assert arun(scenario()) == (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic abc", "missing"),
        ("Bearer ", "missing"),
        ("Bearer nope", "bad"),
        ("bearer tok-b", "denied"),
        ("Bearer tok-a", None),
    ],
)
def test_auth_check_parses_the_header(header, reason) -> None:
    from services.common.certs import token_digest

    interceptor = AuthInterceptor({token_digest("tok-a"): "orchestrator", token_digest("tok-b"): "bob"}, ("orchestrator",))

    assert interceptor.check(header)[1] == reason


def test_plaintext_token_reaches_streaming_methods_too(serve, pki, arun) -> None:
    """grpc.aio files a client interceptor under its first call kind only; the token interceptor
    must still reach client-streaming and server-streaming calls."""

    async def chunks():
        yield policy_sampler_pb2.UpdateWeightsRequest(data=b"abc")

    async def scenario() -> tuple[int, int]:
        async with serve(auth=_server_auth(pki)) as running:
            async with running.channel(auth=_client_auth(pki, "orchestrator")) as ch:
                upload = await policy_sampler_pb2_grpc.PolicySamplerStub(ch).UpdateWeights(chunks(), timeout=3)
                events = [e async for e in orchestrator_pb2_grpc.OrchestratorStub(ch).WatchRun(
                    orchestrator_pb2.WatchRunRequest(run_id="r1"), timeout=3)]
                return upload.bytes_received, len(events)

    assert arun(scenario()) == (3, 3)
