"""TLS and mutual TLS between a GrpcService and channels from create_channel."""

from __future__ import annotations

import grpc
import pytest

from services.common.config import ConfigError, EndpointSection, TLSSection
from services.common.grpc import create_channel
from services.common.wire import reward_node_pb2_grpc


async def _score(channel: grpc.aio.Channel, request) -> grpc.StatusCode:
    try:
        await reward_node_pb2_grpc.RewardNodeStub(channel).Score(request, timeout=3)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_tls_call_succeeds(serve, pki, score, arun) -> None:
    async def scenario() -> grpc.StatusCode:
        async with serve(tls=TLSSection(cert=pki.server.cert, key=pki.server.key)) as running:
            async with running.channel(tls=TLSSection(ca_cert=pki.ca)) as ch:
                return await _score(ch, score())

    assert arun(scenario()) == grpc.StatusCode.OK


def test_plaintext_client_to_tls_server_is_unavailable(serve, pki, score, arun) -> None:
    async def scenario() -> grpc.StatusCode:
        async with serve(tls=TLSSection(cert=pki.server.cert, key=pki.server.key)) as running:
            async with running.channel(tls=TLSSection(insecure=True)) as ch:
                return await _score(ch, score())

    assert arun(scenario()) == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_ca_is_unavailable(serve, pki, score, arun) -> None:
    async def scenario() -> grpc.StatusCode:
        async with serve(tls=TLSSection(cert=pki.server.cert, key=pki.server.key)) as running:
            async with running.channel(tls=TLSSection(ca_cert=pki.rogue_ca)) as ch:
                return await _score(ch, score())

    assert arun(scenario()) == grpc.StatusCode.UNAVAILABLE


def _mtls(pki) -> TLSSection:
    return TLSSection(ca_cert=pki.ca, cert=pki.server.cert, key=pki.server.key, require_client_auth=True)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("none", grpc.StatusCode.UNAVAILABLE),
        ("rogue", grpc.StatusCode.UNAVAILABLE),
        ("signed", grpc.StatusCode.OK),
    ],
)
def test_mtls_needs_a_client_cert_signed_by_the_ca(serve, pki, score, arun, client, expected) -> None:
    certs = {
        "none": {},
        "rogue": {"cert": pki.rogue_client.cert, "key": pki.rogue_client.key},
        "signed": {"cert": pki.client.cert, "key": pki.client.key},
    }[client]

    async def scenario() -> grpc.StatusCode:
        async with serve(tls=_mtls(pki)) as running:
            async with running.channel(tls=TLSSection(ca_cert=pki.ca, **certs)) as ch:
                return await _score(ch, score())

    assert arun(scenario()) == expected


def test_client_cert_and_key_that_do_not_match_are_refused_before_dialling(pki) -> None:
    endpoint = EndpointSection(
        address="127.0.0.1:1", tls=TLSSection(ca_cert=pki.ca, cert=pki.client.cert, key=pki.server.key)
    )

    with pytest.raises(ConfigError, match=r"^tls\.key does not belong to tls\.cert"):
        create_channel(endpoint)
