"""The container health probe (services/common/grpc/healthcheck.py) against real servers on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import yaml

from services.common import certs
from services.common.config import ServerSection, TLSSection
from services.common.grpc import healthcheck


def probe(*argv: str) -> int:
    return healthcheck.main(list(argv))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serving_plaintext_server_is_healthy(serve, arun) -> None:
    async def scenario() -> int:
        async with serve() as running:
            return await asyncio.to_thread(probe, f"127.0.0.1:{running.service.port}", "--insecure", "-q")

    assert arun(scenario()) == healthcheck.EXIT_SERVING


def test_not_ready_server_is_unhealthy(serve, arun, capsys) -> None:
    async def scenario() -> int:
        async with serve(ready=False) as running:
            return await asyncio.to_thread(probe, f"127.0.0.1:{running.service.port}", "--insecure")

    assert arun(scenario()) == healthcheck.EXIT_UNHEALTHY
    assert "NOT_SERVING" in capsys.readouterr().err


def test_nothing_listening_is_unhealthy(capsys) -> None:
    assert probe(f"127.0.0.1:{free_port()}", "--insecure", "--timeout", "1") == healthcheck.EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_mtls_server_accepts_probe_with_client_cert_only(serve, arun, pki) -> None:
    tls = TLSSection(ca_cert=pki.ca, cert=pki.server.cert, key=pki.server.key, require_client_auth=True)

    async def scenario() -> tuple[int, int]:
        async with serve(tls=tls) as running:
            addr = f"127.0.0.1:{running.service.port}"
            with_cert = await asyncio.to_thread(
                probe, addr, "--ca-cert", str(pki.ca), "--cert", str(pki.client.cert), "--key", str(pki.client.key))
            without = await asyncio.to_thread(probe, addr, "--ca-cert", str(pki.ca), "--timeout", "2")
            return with_cert, without

    assert arun(scenario()) == (healthcheck.EXIT_SERVING, healthcheck.EXIT_UNHEALTHY)


def test_settings_file_probe_uses_the_services_own_cert_and_san(serve, arun, tmp_path: Path) -> None:
    # A node certificate made for the name "clinic" only (as in the compose stack), valid for client
    # use too; the probe dials 127.0.0.1 and must verify it as "clinic".
    d = tmp_path / "pki"
    ca = certs.init_ca(d)
    node = certs.issue(d, "clinic", sans=["clinic"], client=True)
    tls = TLSSection(ca_cert=ca.cert, cert=node.cert, key=node.key, require_client_auth=True)
    port = free_port()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node_id": "clinic",
        "server": {"host": "0.0.0.0", "port": port},
        "tls": {"ca_cert": str(ca.cert), "cert": str(node.cert), "key": str(node.key), "require_client_auth": True},
    }))
    async def scenario() -> int:
        async with serve(tls=tls, server=ServerSection(host="127.0.0.1", port=port, grace_s=1.0)):
            return await asyncio.to_thread(probe, "--kind", "reward-node", "--config", str(config))

    assert healthcheck.tls_name_for_loopback(node.cert, "127.0.0.1") == "clinic"
    assert arun(scenario()) == healthcheck.EXIT_SERVING


def test_env_override_reaches_the_probe(serve, arun, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "sampler.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": 1}, "tls": {"insecure": True}}))

    async def scenario() -> int:
        async with serve() as running:
            monkeypatch.setenv("MOR_SAMPLER__SERVER__PORT", str(running.service.port))
            return await asyncio.to_thread(probe, "--kind", "sampler", "--config", str(config), "-q")

    assert arun(scenario()) == healthcheck.EXIT_SERVING


def test_random_port_in_settings_is_a_probe_misconfiguration(tmp_path: Path, capsys) -> None:
    config = tmp_path / "sampler.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": 0}, "tls": {"insecure": True}}))
    assert probe("--kind", "sampler", "--config", str(config)) == healthcheck.EXIT_MISCONFIGURED
    assert "server.port" in capsys.readouterr().err


def test_flags_that_contradict_each_other_are_misconfigurations(tmp_path: Path) -> None:
    config = tmp_path / "sampler.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": 5}, "tls": {"insecure": True}}))
    assert probe("--config", str(config)) == healthcheck.EXIT_MISCONFIGURED
    assert probe("--kind", "sampler", "--config", str(config), "--insecure") == healthcheck.EXIT_MISCONFIGURED
    assert probe("127.0.0.1:5", "--insecure", "--cert", "x.pem") == healthcheck.EXIT_MISCONFIGURED
    assert probe() == healthcheck.EXIT_MISCONFIGURED
