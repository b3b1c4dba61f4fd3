"""Authorisation by an identity bound to both the client certificate and the bearer token, per
method, on a real server over mutual TLS (issue 18, item 7)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr

from services.common import certs
from services.common.config import AuthSection, ConfigError, TLSSection
from services.common.grpc.interceptors import MAX_STATUS_MESSAGE_CHARS
from services.common.wire import policy_sampler_pb2, policy_sampler_pb2_grpc, reward_node_pb2_grpc


@dataclass(frozen=True)
class Orgs:
    dir: Path
    ca: Path
    server: certs.CertPaths
    tokens_file: Path                  # node-tokens.yaml: a token for orchestrator and one for clinic
    token: dict[str, str]

    def client_tls(self, who: str) -> TLSSection:
        paths = certs.cert_paths(self.dir, who)
        return TLSSection(ca_cert=self.ca, cert=paths.cert, key=paths.key)

    def server_tls(self) -> TLSSection:
        return TLSSection(ca_cert=self.ca, cert=self.server.cert, key=self.server.key, require_client_auth=True)


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Orgs:
    """One CA issuing every organisation a client certificate, as deploy/compose does."""
    d = tmp_path_factory.mktemp("orgs-pki")
    ca = certs.init_ca(d)
    server = certs.issue(d, "node")
    for who in ("orchestrator", "clinic"):
        certs.issue(d, who, client=True)
    token = {who: certs.issue_token(d, who, server="node") for who in ("orchestrator", "clinic")}
    return Orgs(d, ca.cert, server, certs.tokens_path(d, "node"), token)


async def _score(running, score, tls: TLSSection, token: str | None) -> tuple[grpc.StatusCode, str]:
    auth = AuthSection(token=SecretStr(token)) if token else AuthSection()
    async with running.channel(tls=tls, auth=auth) as ch:
        try:
            reply = await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("whoami"), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, reply.model_version.split("|")[0]


async def _upload(running, tls: TLSSection) -> tuple[grpc.StatusCode, str]:
    async def chunks():
        yield policy_sampler_pb2.UpdateWeightsRequest(data=b"abc")

    async with running.channel(tls=tls) as ch:
        try:
            await policy_sampler_pb2_grpc.PolicySamplerStub(ch).UpdateWeights(chunks(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_certificate_cannot_carry_another_callers_token(serve, orgs, score, arun) -> None:
    """Before: the token alone named the caller, so clinic's certificate with the orchestrator's
    token was accepted as the orchestrator."""
    auth = AuthSection(tokens_file=orgs.tokens_file, allowed_callers=("orchestrator",))

    async def scenario():
        async with serve(tls=orgs.server_tls(), auth=auth) as running:
            return (await _score(running, score, orgs.client_tls("clinic"), orgs.token["orchestrator"]),
                    await _score(running, score, orgs.client_tls("orchestrator"), orgs.token["orchestrator"]),
                    await _score(running, score, orgs.client_tls("orchestrator"), orgs.token["clinic"]))

    (mixed, mixed_msg), (same, who), (swapped, _) = arun(scenario())

    assert mixed == grpc.StatusCode.PERMISSION_DENIED
    assert "'clinic'" in mixed_msg and "'orchestrator'" in mixed_msg and "does not match" in mixed_msg
    assert len(mixed_msg) < MAX_STATUS_MESSAGE_CHARS
    assert (same, who) == (grpc.StatusCode.OK, "orchestrator")
    # clinic's token is refused before the certificate is looked at: clinic may not call Score
    assert swapped == grpc.StatusCode.PERMISSION_DENIED


def test_mtls_without_tokens_authorises_per_method_by_certificate(serve, orgs, score, arun) -> None:
    """Before: with mTLS and no tokens file, any certificate from the CA could call every method."""
    auth = AuthSection(methods={"UpdateWeights": ("orchestrator",)})

    async def scenario():
        async with serve(tls=orgs.server_tls(), auth=auth) as running:
            return (await _upload(running, orgs.client_tls("clinic")),
                    await _upload(running, orgs.client_tls("orchestrator")),
                    await _score(running, score, orgs.client_tls("clinic"), None))

    (clinic_push, msg), (orch_push, _), (clinic_score, who) = arun(scenario())

    assert clinic_push == grpc.StatusCode.PERMISSION_DENIED
    assert msg == "caller 'clinic' is not allowed to call UpdateWeights"
    assert orch_push == grpc.StatusCode.OK
    assert (clinic_score, who) == (grpc.StatusCode.OK, "clinic")  # Score is not restricted here


def test_an_unknown_method_in_the_allow_list_fails_at_start(serve, orgs, arun) -> None:
    async def scenario():
        async with serve(tls=orgs.server_tls(), auth=AuthSection(methods={"UpdateWeight": ("orchestrator",)})):
            pass

    with pytest.raises(ConfigError, match=r"auth.methods: unknown method\(s\) UpdateWeight"):
        arun(scenario())


def test_allow_lists_without_an_identity_source_fail_at_start(serve, arun) -> None:
    async def scenario():
        async with serve(auth=AuthSection(methods={"UpdateWeights": ("orchestrator",)})):
            pass

    with pytest.raises(ConfigError, match=r"auth.methods needs auth.tokens_file or tls.require_client_auth"):
        arun(scenario())
