"""deploy/compose: the stack file validates (docker-compose config), wires mTLS, tokens and private
volumes per organisation, and its service configs are valid MoR settings."""
from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from services.common.config import (
    OrchestratorSettings,
    RewardNodeSettings,
    RunConfig,
    SamplerSettings,
    load_yaml,
)
from tests.deploy.conftest import COMPOSE_DIR, DEPLOY

NODES = ("clinic", "bank", "school")
COMPOSE = COMPOSE_DIR / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (volume name or host path) of a service."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def test_docker_compose_config_validates() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not found: install Debian package docker-compose (.ci/run does)")
    out = subprocess.run([exe, "-f", str(COMPOSE), "--profile", "run", "config"],
                         capture_output=True, text=True, timeout=120, cwd=COMPOSE_DIR)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert set(resolved["services"]) == {"bootstrap", *NODES, "sampler", "orchestrator", "submit", "prometheus", "grafana"}
    assert resolved["services"]["clinic"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"


def test_docker_compose_rejects_a_broken_file(tmp_path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not found: install Debian package docker-compose (.ci/run does)")
    broken = compose()
    broken["services"]["clinic"]["healthcheck"]["interval"] = ["not", "a", "duration"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    out = subprocess.run([exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0


def test_each_organisation_sees_only_its_own_volumes() -> None:
    services = compose()["services"]
    for node in NODES:
        own = set(mounts(services[node]).values())
        assert own == {f"./config/{node}.yaml", f"data-{node}", f"certs-{node}"}, node
        assert mounts(services[node])["/etc/mor/certs"] == f"certs-{node}"
    for other in ("sampler", "orchestrator", "submit", "prometheus", "grafana"):
        sources = set(mounts(services[other]).values())
        assert not any(s.startswith(("data-", "certs-")) or s == "pki" for s in sources), other


@pytest.mark.parametrize("node", NODES)
def test_node_configs_demand_mtls_and_the_orchestrators_token(node: str) -> None:
    s = load_yaml(RewardNodeSettings, COMPOSE_DIR / "config" / f"{node}.yaml")
    assert s.node_id == node
    assert s.tls.require_client_auth and not s.tls.insecure
    assert s.auth.allowed_callers == ("orchestrator",)
    assert s.server.host == "0.0.0.0" and s.metrics.host == "0.0.0.0"
    assert str(s.tls.cert).startswith("/etc/mor/certs/") and str(s.model.checkpoint).startswith("/var/lib/mor/")


def test_server_side_configs_are_valid_and_wired_to_the_nodes() -> None:
    sampler = load_yaml(SamplerSettings, COMPOSE_DIR / "config" / "sampler.yaml")
    orch = load_yaml(OrchestratorSettings, COMPOSE_DIR / "config" / "orchestrator.yaml")
    run = load_yaml(RunConfig, COMPOSE_DIR / "config" / "run.yaml")
    assert sampler.tls.require_client_auth and orch.tls.require_client_auth
    assert run.sampler is not None and run.sampler.address == f"sampler:{sampler.server.port}"
    node_ports = {n: load_yaml(RewardNodeSettings, COMPOSE_DIR / "config" / f"{n}.yaml").server.port for n in NODES}
    assert {(n.node_id, n.address) for n in run.nodes} == {(n, f"{n}:{p}") for n, p in node_ports.items()}
    for n in run.nodes:
        assert str(n.auth.token_file) == f"/etc/mor/certs/orchestrator-to-{n.node_id}.token"
        assert n.tls.cert is not None  # the orchestrator's client certificate: mTLS
    assert run.fanout.min_nodes <= len(run.nodes)


def test_sampler_admits_only_the_orchestrators_certificate() -> None:
    """compose gives every organisation a client certificate from one CA: the sampler must name
    the orchestrator per method, and the orchestrator must present the certificate of that name
    (`mor certs issue orchestrator` writes CN=orchestrator to orchestrator.pem; issue 18, item 7)."""
    sampler = load_yaml(SamplerSettings, COMPOSE_DIR / "config" / "sampler.yaml")
    run = load_yaml(RunConfig, COMPOSE_DIR / "config" / "run.yaml")
    assert sampler.auth.tokens_file is None and sampler.tls.require_client_auth
    for method in ("Generate", "UpdateWeights"):
        assert sampler.auth.callers_for(method) == {"orchestrator"}, method
    assert run.sampler is not None and run.sampler.tls.cert is not None
    assert run.sampler.tls.cert.name == "orchestrator.pem"
    for n in run.nodes:  # the node tokens were issued to the identity the certificate names
        assert n.tls.cert.name == "orchestrator.pem" and n.auth.token_file.name.startswith("orchestrator-to-")


def test_submit_uses_the_operator_identity_the_orchestrator_allows() -> None:
    orch = load_yaml(OrchestratorSettings, COMPOSE_DIR / "config" / "orchestrator.yaml")
    submit = compose()["services"]["submit"]
    args = dict(a.split("=", 1) for a in submit["command"] if a.startswith("--"))
    assert args["--address"] == f"orchestrator:{orch.server.port}"
    assert args["--token-file"].endswith("operator-to-orchestrator.token")
    assert orch.auth.allowed_callers == ("operator",)
    script = mounts(submit)["/opt/mor-deploy/submit-run.py"]
    assert (COMPOSE_DIR / script).resolve() == (DEPLOY / "helm/mor-server/files/submit-run.py").resolve()


def test_every_grpc_service_has_a_grpc_health_check() -> None:
    """Reward nodes declare theirs (a longer start period: they train first); the sampler and the
    orchestrator use their image's HEALTHCHECK, which reads the file mounted at its MOR_CONFIG."""
    services = compose()["services"]
    for name in NODES:
        test = services[name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.grpc.healthcheck"], name
        assert test[test.index("--kind") + 1] == "reward-node"
        assert mounts(services[name])[test[test.index("--config") + 1]] == f"./config/{name}.yaml"
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    for name in ("sampler", "orchestrator"):
        service = services[name]
        assert "healthcheck" not in service, f"{name}: the image's HEALTHCHECK is the one to use"
        assert service["image"].startswith(f"mor-{name}:")
        config = f"/etc/mor/{name}.yaml"
        assert f"MOR_SERVICE={name} MOR_CONFIG={config}" in dockerfile
        assert mounts(service)[config] == f"./config/{name}.yaml"


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {(job["job_name"], t, sc.get("labels", {}).get("node_id"))
               for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = {("mor-reward-node", f"{n}:{load_yaml(RewardNodeSettings, COMPOSE_DIR / 'config' / f'{n}.yaml').metrics.port}", n)
                for n in NODES}
    expected.add(("mor-sampler", f"sampler:{load_yaml(SamplerSettings, COMPOSE_DIR / 'config/sampler.yaml').metrics.port}", None))
    expected.add(("mor-orchestrator",
                  f"orchestrator:{load_yaml(OrchestratorSettings, COMPOSE_DIR / 'config/orchestrator.yaml').metrics.port}", None))
    assert expected <= targets


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_shell_scripts_parse() -> None:
    for script, shell in ((COMPOSE_DIR / "bootstrap.sh", "sh"), (DEPLOY / "docker/build.sh", "bash"),
                          (DEPLOY / "test-images.sh", "bash")):
        out = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{script}: {out.stderr}"
