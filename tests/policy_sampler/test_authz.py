"""Who may use and replace the policy: a sampler configured like deploy/compose/config/sampler.yaml
(mutual TLS, no tokens) admits Generate and UpdateWeights only from the orchestrator's certificate,
although every organisation holds a client certificate from the same CA (issue 18, item 7)."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml

from services.common import certs
from services.common.config import EndpointSection, TLSSection
from services.policy_sampler.client import SamplerClient, SamplerPrompt

COMPOSE_SAMPLER = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "config" / "sampler.yaml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("sampler-pki")
    certs.init_ca(d)
    for name, client in (("sampler", False), ("orchestrator", True), ("clinic", True)):
        certs.issue(d, name, client=client)
    return d


def _compose_like(pki: Path) -> dict:
    """The compose sampler's tls and auth sections, with this test's certificate paths."""
    compose = yaml.safe_load(COMPOSE_SAMPLER.read_text())
    tls = {k: str(pki / Path(v).name) if k in ("ca_cert", "cert", "key") else v for k, v in compose["tls"].items()}
    out = {"tls": {"insecure": False, **tls}}
    if "auth" in compose:
        out["auth"] = compose["auth"]
    return out


async def _calls(port: int, pki: Path, who: str) -> list[grpc.StatusCode]:
    tls = TLSSection(ca_cert=pki / "ca.pem", cert=pki / f"{who}.pem", key=pki / f"{who}.key")
    codes = []
    async with SamplerClient(EndpointSection(address=f"127.0.0.1:{port}", tls=tls, timeout_s=30.0), retries=0) as client:
        for call in (client.generate([SamplerPrompt("p", "q")], 2), client.push_weights(1, b"x", "full"),
                     client.get_info()):
            try:
                await call
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
    return codes


def test_only_the_orchestrator_certificate_may_generate_or_push_weights(serve, arun, pki) -> None:
    """Before: any certificate from the CA (CN=clinic) could push policy weights and generate."""
    async def scenario():
        async with serve(**_compose_like(pki)) as running:
            return await _calls(running.app.port, pki, "clinic"), await _calls(running.app.port, pki, "orchestrator")

    clinic, orchestrator = arun(scenario())

    assert clinic == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK]
    # the orchestrator gets past auth (a 1-byte payload is not safetensors: refused by the update checks)
    assert orchestrator == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK]


def test_the_sampler_defaults_allow_only_the_orchestrator(serve, arun, pki) -> None:
    """No auth section at all: the typed config's defaults give the same answer."""
    async def scenario():
        async with serve(tls=_compose_like(pki)["tls"]) as running:
            return await _calls(running.app.port, pki, "clinic")

    assert arun(scenario())[:2] == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED]
