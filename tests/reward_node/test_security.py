"""Transport security and caller auth end to end through a reward node: TLS, mutual TLS and
bearer tokens, including every failure a caller can meet."""
from __future__ import annotations

import grpc
import pytest

from services.common.config import AuthSection, EndpointSection, TLSSection
from services.reward_node.client import RewardNodeClient, ScoreGroup

from .conftest import Pki, node_settings


def _tls(pki: Pki, mtls: bool = False) -> dict:
    out = {"insecure": False, "cert": str(pki.server.cert), "key": str(pki.server.key)}
    if mtls:
        out |= {"ca_cert": str(pki.ca), "require_client_auth": True}
    return out


def _auth(pki: Pki) -> dict:
    return {"tokens_file": str(pki.tokens_file), "allowed_callers": ["orchestrator"]}


async def _try(address: str, **kwargs) -> grpc.StatusCode:
    """Score once; the status code it ends with (OK on success)."""
    async with RewardNodeClient.connect(address, retries=0, timeout_s=5, **kwargs) as client:
        try:
            await client.score("q", ["abc"])
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_tls_serves_a_verifying_client_and_refuses_plaintext(node, pki, arun) -> None:
    async def scenario():
        async with node(node_settings(tls=_tls(pki))) as running:
            a = running.address
            return (await _try(a, ca_cert=pki.ca), await _try(a, insecure=True),
                    await _try(a, ca_cert=pki.rogue_client.cert))

    ok, plaintext, wrong_ca = arun(scenario())

    assert ok == grpc.StatusCode.OK
    assert plaintext == grpc.StatusCode.UNAVAILABLE
    assert wrong_ca == grpc.StatusCode.UNAVAILABLE  # the server certificate does not verify


def test_mutual_tls_needs_a_client_certificate_from_the_node_ca(node, pki, arun) -> None:
    async def scenario():
        async with node(node_settings(tls=_tls(pki, mtls=True))) as running:
            a = running.address
            return (
                await _try(a, ca_cert=pki.ca, cert=pki.client.cert, key=pki.client.key),
                await _try(a, ca_cert=pki.ca),
                await _try(a, ca_cert=pki.ca, cert=pki.rogue_client.cert, key=pki.rogue_client.key),
            )

    ok, no_cert, rogue = arun(scenario())

    assert ok == grpc.StatusCode.OK
    assert no_cert == grpc.StatusCode.UNAVAILABLE
    assert rogue == grpc.StatusCode.UNAVAILABLE


def test_bearer_tokens_over_mtls(node, pki, arun) -> None:
    creds = {"ca_cert": pki.ca, "cert": pki.client.cert, "key": pki.client.key}

    async def scenario():
        async with node(node_settings(tls=_tls(pki, mtls=True), auth=_auth(pki))) as running:
            a = running.address
            out = {
                "valid": await _try(a, token=pki.orchestrator_token, **creds),
                "missing": await _try(a, **creds),
                "unknown": await _try(a, token="not-a-real-token", **creds),
                "not allowed": await _try(a, token=pki.intruder_token, **creds),
            }
            async with RewardNodeClient.connect(a, retries=0, **creds) as client:
                out["health without token"] = await client.health()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.info()
                out["info without token"] = err.value.code()
            return out

    assert arun(scenario()) == {
        "valid": grpc.StatusCode.OK,
        "missing": grpc.StatusCode.UNAUTHENTICATED,
        "unknown": grpc.StatusCode.UNAUTHENTICATED,
        "not allowed": grpc.StatusCode.PERMISSION_DENIED,
        "health without token": "SERVING",
        "info without token": grpc.StatusCode.UNAUTHENTICATED,
    }


def test_token_from_file_and_batch_calls_are_checked_too(node, pki, arun, tmp_path) -> None:
    token_file = tmp_path / "orch.token"
    token_file.write_text(pki.orchestrator_token + "\n")

    async def scenario():
        async with node(node_settings(tls=_tls(pki), auth=_auth(pki))) as running:
            endpoint = EndpointSection(address=running.address, tls=TLSSection(ca_cert=pki.ca),
                                       auth=AuthSection(token_file=token_file), timeout_s=5)
            async with RewardNodeClient(endpoint, retries=0) as client:
                ok = await client.score("q", ["ab"])
            async with RewardNodeClient.connect(running.address, ca_cert=pki.ca, retries=0) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await anonymous.score_batch([ScoreGroup("q", ["a"])])
            return ok.scores, err.value.code()

    scores, batch_code = arun(scenario())

    assert scores == [2.0]
    assert batch_code == grpc.StatusCode.UNAUTHENTICATED


def test_the_caller_is_the_identity_certificate_and_token_agree_on(node, pki, arun) -> None:
    """Before: the token alone named the caller, so clinic's certificate with the orchestrator's
    token was accepted; and under mTLS without tokens any certificate from the CA could score."""
    from services.common import certs

    clinic = certs.issue(pki.ca.parent, "clinic", client=True)
    as_clinic = {"ca_cert": pki.ca, "cert": clinic.cert, "key": clinic.key}
    as_orchestrator = {"ca_cert": pki.ca, "cert": pki.client.cert, "key": pki.client.key}

    async def scenario():
        async with node(node_settings(tls=_tls(pki, mtls=True), auth=_auth(pki))) as running:
            borrowed = await _try(running.address, token=pki.orchestrator_token, **as_clinic)
            own = await _try(running.address, token=pki.orchestrator_token, **as_orchestrator)
        async with node(node_settings(tls=_tls(pki, mtls=True))) as running:  # mTLS, no tokens: the defaults
            cert_only = await _try(running.address, **as_clinic), await _try(running.address, **as_orchestrator)
        return borrowed, own, cert_only

    borrowed, own, cert_only = arun(scenario())

    assert borrowed == grpc.StatusCode.PERMISSION_DENIED
    assert own == grpc.StatusCode.OK
    assert cert_only == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)
