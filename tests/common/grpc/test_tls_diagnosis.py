"""TLS failures explained on the client: which side refused the connection and why (issue 18,
item 9). Before, a server refusing the client reached it only as UNAVAILABLE "Socket closed".
Real servers and clients on 127.0.0.1, certificates made here."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common import certs
from services.common.config import TLSSection
from services.common.grpc import healthcheck
from services.common.grpc.tls_diagnosis import adescribe_rpc_error
from services.common.wire import reward_node_pb2_grpc


def _server_tls(pki, which: str = "good") -> TLSSection:
    if which == "rogue":  # a server certificate from a CA the client does not trust
        paths = certs.issue(pki.rogue_ca.parent, "node")
    elif which == "wrong-host":
        paths = certs.issue(pki.dir, "elsewhere", sans=["example.com"])
    else:
        paths = pki.server
    return TLSSection(ca_cert=pki.ca, cert=paths.cert, key=paths.key, require_client_auth=True)


def _client_tls(pki, which: str) -> TLSSection:
    if which == "plaintext":
        return TLSSection(insecure=True)
    if which == "no-cert":
        return TLSSection(ca_cert=pki.ca)
    if which == "rogue-cert":
        return TLSSection(ca_cert=pki.ca, cert=pki.rogue_client.cert, key=pki.rogue_client.key)
    if which == "server-cert":  # a certificate without clientAuth
        return TLSSection(ca_cert=pki.ca, cert=pki.server.cert, key=pki.server.key)
    return TLSSection(ca_cert=pki.ca, cert=pki.client.cert, key=pki.client.key)


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [
        ("good", "no-cert", "the server refused this client: it requires a client certificate (mutual TLS) and none was sent"),
        ("good", "rogue-cert", "the server refused this client's certificate: this client's certificate (CN=orchestrator, "
                               "issued by CN=MoR dev CA) is not signed by tls.ca_cert"),
        ("good", "server-cert", "is not valid for client authentication"),
        ("good", "plaintext", "the server speaks TLS, but this client connects in plaintext"),
        ("rogue", "good", "this client refused the server's certificate: it does not verify against tls.ca_cert"),
        ("wrong-host", "good", "this client refused the server's certificate: it is not issued for '127.0.0.1' "
                               "(it names: example.com)"),
        ("plaintext", "good", "the server does not speak TLS"),
    ],
)
def test_the_client_error_says_which_side_refused_and_why(serve, pki, score, arun, server, client, expected) -> None:
    server_tls = TLSSection(insecure=True) if server == "plaintext" else _server_tls(pki, server)
    client_tls = _client_tls(pki, client)

    async def scenario() -> tuple[str, str]:
        async with serve(tls=server_tls) as running:
            async with running.channel(tls=client_tls) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await reward_node_pb2_grpc.RewardNodeStub(ch).Score(score(), timeout=5)
            return err.value.details() or "", await adescribe_rpc_error(err.value, running.service.address, client_tls)

    raw, message = arun(scenario())

    if client in ("no-cert", "rogue-cert", "server-cert", "plaintext"):
        assert raw.endswith("Socket closed")  # all gRPC itself tells the client
    assert expected in message
    assert message.startswith("UNAVAILABLE: TLS handshake with 127.0.0.1:")
    assert len(message) < 1000


def test_the_health_probe_cli_says_the_server_wants_a_client_certificate(serve, pki, arun, capsys) -> None:
    async def scenario() -> int:
        async with serve(tls=_server_tls(pki)) as running:
            return await asyncio.to_thread(
                healthcheck.main, [running.service.address, "--ca-cert", str(pki.ca), "--timeout", "5"])

    code = arun(scenario())

    err = capsys.readouterr().err
    assert code == healthcheck.EXIT_UNHEALTHY
    assert "the server refused this client: it requires a client certificate" in err
    assert "Traceback" not in err


def test_a_registered_node_that_refuses_tls_says_why_in_its_health(serve, pki, arun, tmp_path) -> None:
    from services.common.config import OrchestratorSettings
    from services.orchestrator.run_control import RunManager

    manager = RunManager(OrchestratorSettings(runs_dir=tmp_path, tls={"insecure": True},
                                              node_tls=_client_tls(pki, "no-cert")))

    async def scenario():
        async with serve(tls=_server_tls(pki)) as running:
            return await manager.register("clinic", running.service.address)

    node = arun(scenario())

    assert not node.healthy
    assert "TLS handshake with 127.0.0.1:" in node.last_error
    assert "it requires a client certificate (mutual TLS) and none was sent" in node.last_error
