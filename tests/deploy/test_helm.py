"""The Helm charts: rendered by Helm's engine, every manifest valid against the Kubernetes schemas,
and the MoR config files they carry valid for the services that read them."""
from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import lint
from helm_python.errors import HelmRenderError, HelmValuesError

from services.common.config import (
    OrchestratorSettings,
    RewardNodeSettings,
    RunConfig,
    SamplerSettings,
    build,
)
from tests.deploy.conftest import CHARTS, KUBE_VERSION, by_kind, notes, one, render

NODE_CUSTOM: dict[str, Any] = {
    "nodeId": "bank",
    "image": {"repository": "registry.example/mor-reward-node", "tag": "1.2.3"},
    "model": {"kind": "vlm", "torchThreads": 2, "formatWeight": 0.1},
    "checkpoint": {"existingClaim": "bank-rm", "path": "models/rm-v3"},
    "training": {"enabled": True, "dataClaim": "bank-private-prefs", "dataPath": "world/clients/bank", "epochs": 5},
    "settings": {"batching": {"max_batch_size": 8}, "limits": {"max_responses": 16},
                 "prototype": {"publish": True, "noise_sigma": 0.1}, "model": {"lora_rank": 4}},
    "server": {"port": 6000, "graceSeconds": 20},
    "metrics": {"port": 9200},
    "tls": {"secretName": "bank-tls"},
    "auth": {"tokensSecretName": "bank-tokens", "allowedCallers": ["orchestrator", "auditor"]},
    "probes": {"kind": "http"},
    "replicaCount": 2,
    "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.10/32"], "headless": True},
    "networkPolicy": {"orchestrator": {"namespaceSelector": {}, "ipBlocks": ["203.0.113.10/32"]}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    "nodeSelector": {"org": "bank"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mor", "effect": "NoSchedule"}],
}

SERVER_CUSTOM: dict[str, Any] = {
    "rewardNodes": [
        {"nodeId": "clinic", "address": "rm.clinic.example:443", "tokenSecret": "tok-clinic", "timeoutSeconds": 10},
        {"nodeId": "bank", "address": "10.1.2.3:50051", "tokenSecret": "tok-bank"},
        {"nodeId": "school", "address": "dns:///rm-school-headless.school.svc:50051", "tokenSecret": "tok-school"},
    ],
    "sampler": {"backend": "hf", "image": {"repository": "mor-sampler", "tag": "dev"},
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}, "nodeSelector": {}, "tolerations": [],
                "settings": {"hf": {"torch_threads": 2}, "max_new_tokens": 64}, "tls": {"requireClientAuth": False}},
    "orchestrator": {"mode": "run", "run": {"grpo": {"steps": 3, "group_size": 2}, "fanout": {"min_nodes": 1},
                                            "router": {"kind": "mean"}}},
    "serviceMonitor": {"enabled": True},
    "networkPolicy": {"enabled": False},
}

TRAINER_INDEXED: dict[str, Any] = {"orchestrator": {
    "mode": "run", "trainer": {"nodes": 2, "nprocPerNode": 4},
    "storage": {"accessModes": ["ReadWriteMany"]}, "run": {"device": "cuda", "distributed": {"strategy": "fsdp"}}}}
TRAINER_PYTORCHJOB: dict[str, Any] = {"orchestrator": {
    "mode": "run", "trainer": {"nodes": 3, "nprocPerNode": 2, "launcher": "pytorchJob"},
    "storage": {"existingClaim": "runs-rwx"}, "run": {"device": "cuda", "distributed": {"strategy": "ddp"}}}}

CASES = {
    "reward-node-default": ("mor-reward-node", {}),
    "server-trainer-indexed": ("mor-server", TRAINER_INDEXED),
    "server-trainer-pytorchjob": ("mor-server", TRAINER_PYTORCHJOB),
    "reward-node-custom": ("mor-reward-node", NODE_CUSTOM),
    "server-default": ("mor-server", {}),
    "server-custom": ("mor-server", SERVER_CUSTOM),
}

# prometheus-operator's CRD is not in the Kubernetes schemas; this is the part of it the charts use.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                   "relabelings": {"type": "array"}}}},
            },
        },
    },
}


# The Kubeflow training operator's CRD is not in the Kubernetes schemas either: the part the chart uses.
PYTORCHJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "spec": {
            "type": "object",
            "required": ["pytorchReplicaSpecs"],
            "properties": {
                "runPolicy": {"type": "object", "properties": {"backoffLimit": {"type": "integer", "minimum": 0}}},
                "pytorchReplicaSpecs": {
                    "type": "object", "required": ["Master"], "additionalProperties": False,
                    "properties": {k: {"type": "object", "required": ["replicas", "template"], "properties": {
                        "replicas": {"type": "integer", "minimum": 0},
                        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                        "template": {"type": "object", "required": ["spec"]}}} for k in ("Master", "Worker")},
                },
            },
        },
    },
}


def config_of(docs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    maps = [d for d in by_kind(docs, "ConfigMap") if key in d.get("data", {})]
    assert len(maps) == 1, f"one ConfigMap should carry {key}"
    return yaml.safe_load(maps[0]["data"][key])


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every Deployment and Job."""
    out = []
    for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        spec = d["spec"]["template"]["spec"]
        out.extend((spec, c) for c in spec["containers"])
    for d in by_kind(docs, "PyTorchJob"):
        for replica in d["spec"]["pytorchReplicaSpecs"].values():
            out.extend((replica["template"]["spec"], c) for c in replica["template"]["spec"]["containers"])
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_is_valid_kubernetes(case: str) -> None:
    import jsonschema

    chart, values = CASES[case]
    docs = render(chart, values)
    assert docs, "the chart rendered nothing"
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        elif doc["kind"] == "PyTorchJob":
            jsonschema.validate(doc, PYTORCHJOB_SCHEMA)
            for replica in doc["spec"]["pytorchReplicaSpecs"].values():  # each pod template as a Pod
                pod = {"apiVersion": "v1", "kind": "Pod", **replica["template"]}
                pod["metadata"] = {"name": "x", **pod["metadata"]}
                kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_are_uniquely_named_and_labelled(case: str) -> None:
    chart, values = CASES[case]
    docs = render(chart, values, name="rel")
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), keys
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mor", d["metadata"]["name"]


@pytest.mark.parametrize("chart", ["mor-reward-node", "mor-server"])
def test_helm_lint_reports_no_warnings(chart: str) -> None:
    report = lint(CHARTS / chart, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# ---- reward node chart ----------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, NODE_CUSTOM], ids=["default", "custom"])
def test_reward_node_config_is_valid_settings_matching_the_pod(values: dict[str, Any]) -> None:
    docs = render("mor-reward-node", values)
    settings = build(RewardNodeSettings, config_of(docs, "reward-node.yaml"), "reward-node.yaml")
    assert settings.node_id == values.get("nodeId", "clinic")
    assert settings.server.host == "0.0.0.0" and settings.metrics.host == "0.0.0.0"
    assert settings.tls.require_client_auth is True
    assert settings.auth.allowed_callers
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.server.port, "metrics": settings.metrics.port}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (settings.tls.cert, settings.tls.key, settings.tls.ca_cert, settings.auth.tokens_file):
        assert any(str(path).startswith(m + "/") for m in mounts), f"{path} is not on a mounted volume"
    assert str(settings.model.checkpoint).startswith("/var/lib/mor/checkpoint/")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_reward_node_settings_merge_keeps_chart_owned_fields() -> None:
    docs = render("mor-reward-node", NODE_CUSTOM)
    cfg = config_of(docs, "reward-node.yaml")
    assert cfg["batching"]["max_batch_size"] == 8 and cfg["limits"]["max_responses"] == 16
    assert cfg["model"]["lora_rank"] == 4 and cfg["model"]["kind"] == "vlm"
    assert cfg["model"]["checkpoint"] == "/var/lib/mor/checkpoint/models/rm-v3"
    assert cfg["server"]["port"] == 6000 and cfg["data_dir"] == "/var/lib/mor/data/world/clients/bank"


def test_reward_node_probes_use_grpc_health_by_default() -> None:
    container = one(render("mor-reward-node"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "startupProbe"):
        cmd = container[probe]["exec"]["command"]
        assert cmd[:3] == ["python", "-m", "services.common.grpc.healthcheck"]
        assert cmd[cmd.index("--kind") + 1] == "reward-node"
        assert cmd[cmd.index("--config") + 1] in {m["mountPath"] for m in container["volumeMounts"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}


def test_reward_node_http_and_plaintext_grpc_probes() -> None:
    http = one(render("mor-reward-node", {"probes": {"kind": "http"}}), "Deployment")
    assert http["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    plain = one(render("mor-reward-node", {"probes": {"kind": "grpc"}, "tls": {"enabled": False}}), "Deployment")
    assert plain["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"] == {"port": 50051}


def test_kubelet_grpc_probe_with_tls_is_refused() -> None:
    with pytest.raises(HelmRenderError, match="plaintext only"):
        render("mor-reward-node", {"probes": {"kind": "grpc"}})


def test_reward_node_network_policy_admits_only_the_orchestrator() -> None:
    docs = render("mor-reward-node", NODE_CUSTOM)
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mor-orchestrator"}}
    assert {"ipBlock": {"cidr": "203.0.113.10/32"}} in grpc_rule["from"]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    deploy = one(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


def test_node_policy_matches_the_server_charts_orchestrator_pods() -> None:
    """The reward node chart's default NetworkPolicy must admit the server chart's orchestrator."""
    node_peer = one(render("mor-reward-node"), "NetworkPolicy")["spec"]["ingress"][0]["from"][0]
    orch = one(render("mor-server"), "Deployment", "mor-orchestrator")
    labels = orch["spec"]["template"]["metadata"]["labels"]
    assert node_peer["podSelector"]["matchLabels"].items() <= labels.items()


def test_reward_node_training_job_mounts_private_data_only_there() -> None:
    docs = render("mor-reward-node", NODE_CUSTOM)
    job = one(docs, "Job")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"bank-private-prefs", "bank-rm"}
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["reward-node", "train"]
    serving = {v["persistentVolumeClaim"]["claimName"] for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in v}
    assert serving == {"bank-rm"}
    assert by_kind(docs, "PersistentVolumeClaim") == []  # existingClaim: the chart creates none


def test_service_monitor_sets_the_job_name_the_rules_expect() -> None:
    monitor = one(render("mor-reward-node", NODE_CUSTOM), "ServiceMonitor")
    relabel = {r["targetLabel"]: r["replacement"] for r in monitor["spec"]["endpoints"][0]["relabelings"]}
    assert relabel == {"job": "mor-reward-node", "node_id": "bank"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"


@pytest.mark.parametrize("bad, message", [
    ({"nodeId": "Bank!"}, "nodeId"),
    ({"probes": {"kind": "tcp"}}, "kind"),
    ({"model": {"kind": "gpt"}}, "kind"),
    ({"server": {"port": 70000}}, "port"),
    ({"replicas": 2}, "replicas"),
    ({"settings": {"tls": {"insecure": True}}}, "propertyName .tls."),
])
def test_reward_node_schema_rejects_bad_values(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError, match=message):
        render("mor-reward-node", bad)


def test_reward_node_replicas_get_a_headless_service_over_the_same_pods() -> None:
    docs = render("mor-reward-node", NODE_CUSTOM, name="rm-bank")

    headless = one(docs, "Service", "rm-bank-headless")
    main = one(docs, "Service", "rm-bank")
    assert headless["spec"]["clusterIP"] == "None" and "clusterIP" not in main["spec"]
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert len(by_kind(render("mor-reward-node", {}), "Service")) == 1  # off by default


def test_reward_node_notes_name_the_address_and_secrets() -> None:
    text = notes("mor-reward-node", {"nodeId": "bank"}, name="rm-bank")
    assert "rm-bank.mor.svc:50051" in text and "rm-bank-tls" in text and "rm-bank-tokens" in text


# ---- server chart ---------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, SERVER_CUSTOM], ids=["default", "custom"])
def test_server_configs_are_valid_settings(values: dict[str, Any]) -> None:
    docs = render("mor-server", values)
    run = build(RunConfig, config_of(docs, "run.yaml"), "run.yaml")
    expected = values.get("rewardNodes") or yaml.safe_load((CHARTS / "mor-server" / "values.yaml").read_text())["rewardNodes"]
    assert [(n.node_id, n.address) for n in run.nodes] == [(n["nodeId"], n["address"]) for n in expected]
    assert all(n.tls.cert is not None and n.auth.token_file is not None for n in run.nodes)
    assert run.sampler is not None and run.sampler.address == "mor-sampler:50061"
    build(OrchestratorSettings, config_of(docs, "orchestrator.yaml"), "orchestrator.yaml")
    sampler = build(SamplerSettings, config_of(docs, "sampler.yaml"), "sampler.yaml")
    assert sampler.backend == ("hf" if values else "vllm")
    assert str(sampler.model.path).startswith("/var/lib/mor/models/")


def test_sampler_admits_only_the_orchestrator_identity_to_generate_and_push() -> None:
    """Every organisation may hold a client certificate from the CA the sampler trusts: the
    sampler's per-method allow-list names the orchestrator's identity (issue 18, item 7)."""
    default = build(SamplerSettings, config_of(render("mor-server"), "sampler.yaml"), "sampler.yaml")
    renamed = build(SamplerSettings, config_of(render("mor-server", {"orchestrator": {"identity": "mor-orch"}}),
                                               "sampler.yaml"), "sampler.yaml")
    orch = build(OrchestratorSettings, config_of(render("mor-server"), "orchestrator.yaml"), "orchestrator.yaml")

    assert default.tls.require_client_auth
    assert default.auth.callers_for("UpdateWeights") == default.auth.callers_for("Generate") == {"orchestrator"}
    assert renamed.auth.callers_for("UpdateWeights") == {"mor-orch"}
    assert orch.auth.operators == {"operator"} and orch.auth.callers_for("StopRun") == {"operator"}
    assert orch.auth.callers_for("RemoveNode") is None  # any organisation, limited to its own node_id


def test_reward_node_binds_certificate_and_token_to_the_allowed_callers() -> None:
    settings = build(RewardNodeSettings, config_of(render("mor-reward-node", {"auth": {"certIdentity": "dns_san"}}),
                                                   "reward-node.yaml"), "reward-node.yaml")
    assert settings.auth.cert_identity == "dns_san" and settings.auth.allowed_callers == ("orchestrator",)


def test_trainer_as_an_indexed_job_of_pods_under_torchrun() -> None:
    docs = render("mor-server", TRAINER_INDEXED, name="rel")

    job = one(docs, "Job")
    svc = one(docs, "Service", "rel-orchestrator-trainer")
    pod = job["spec"]["template"]["spec"]
    script = pod["containers"][0]["command"]
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
    assert script[:2] == ["sh", "-c"] and pod["containers"][0]["args"] == []
    assert ("--nnodes 2 --nproc-per-node 4 --node-rank \"$JOB_COMPLETION_INDEX\" "
            f"--master-addr {job['metadata']['name']}-0.{svc['metadata']['name']} --master-port 29400") in script[2]
    assert script[2].endswith("-m services.cli orchestrator run --config /etc/mor/run.yaml --resume --quiet")
    run = build(RunConfig, config_of(docs, "run.yaml"), "run.yaml")
    assert run.device == "cuda" and run.distributed.strategy == "fsdp"
    policy = one(docs, "NetworkPolicy", "rel-orchestrator")
    assert {"from": [{"podSelector": {"matchLabels": svc["spec"]["selector"]}}]} in policy["spec"]["ingress"]


def test_trainer_as_a_pytorchjob_has_one_master_and_the_other_pods_as_workers() -> None:
    docs = render("mor-server", TRAINER_PYTORCHJOB)

    job = one(docs, "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 2)
    container = specs["Master"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"  # the operator injects MASTER_ADDR/RANK into this container
    assert '--node-rank "$RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"' in container["command"][2]
    assert not by_kind(docs, "Job")


def test_one_process_trainer_keeps_the_plain_job_and_several_pods_need_a_shared_volume() -> None:
    plain = one(render("mor-server", {"orchestrator": {"mode": "run"}}), "Job")
    assert "completionMode" not in plain["spec"] and "command" not in plain["spec"]["template"]["spec"]["containers"][0]
    one_pod = one(render("mor-server", {"orchestrator": {"mode": "run", "trainer": {"nprocPerNode": 2}}}), "Job")
    assert "--standalone --nproc-per-node 2" in one_pod["spec"]["template"]["spec"]["containers"][0]["command"][2]
    with pytest.raises(HelmRenderError, match="ReadWriteMany"):
        render("mor-server", {"orchestrator": {"mode": "run", "trainer": {"nodes": 2}}})


def test_node_tokens_are_projected_where_the_run_config_reads_them() -> None:
    docs = render("mor-server", SERVER_CUSTOM)
    run = config_of(docs, "run.yaml")
    job = one(docs, "Job")
    spec = job["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "node-tokens")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "node-tokens")
    projected = {f"{mount['mountPath']}/{s['secret']['items'][0]['path']}": s["secret"]["name"]
                 for s in volume["projected"]["sources"]}
    assert projected == {"/etc/mor/node-tokens/clinic.token": "tok-clinic", "/etc/mor/node-tokens/bank.token": "tok-bank",
                         "/etc/mor/node-tokens/school.token": "tok-school"}
    assert sorted(n["auth"]["token_file"] for n in run["nodes"]) == sorted(projected)
    assert spec["containers"][0]["args"][:4] == ["orchestrator", "run", "--config", "/etc/mor/run.yaml"]
    assert spec["restartPolicy"] == "Never"
    assert not [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("orchestrator")]


def test_sampler_gets_a_gpu_node_and_shared_memory_by_default() -> None:
    pod = one(render("mor-server"), "Deployment", "mor-sampler")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert container["readinessProbe"]["exec"]["command"][-3:] == ["sampler", "--config", "/etc/mor/sampler.yaml"]


def test_sampler_only_reachable_from_the_orchestrator() -> None:
    docs = render("mor-server")
    policy = one(docs, "NetworkPolicy", "mor-sampler")
    grpc_rule = policy["spec"]["ingress"][0]
    assert grpc_rule["ports"][0]["port"] == "grpc"
    orch_labels = one(docs, "Deployment", "mor-orchestrator")["spec"]["template"]["metadata"]["labels"]
    assert len(grpc_rule["from"]) == 1
    assert grpc_rule["from"][0]["podSelector"]["matchLabels"].items() <= orch_labels.items()


def test_server_service_monitors_name_jobs_like_the_rules() -> None:
    docs = render("mor-server", {"serviceMonitor": {"enabled": True}})
    jobs = {m["metadata"]["name"]: m["spec"]["endpoints"][0]["relabelings"][0]["replacement"]
            for m in by_kind(docs, "ServiceMonitor")}
    assert jobs == {"mor-sampler": "mor-sampler", "mor-orchestrator": "mor-orchestrator"}


def test_submit_script_ships_in_the_orchestrator_config_map() -> None:
    docs = render("mor-server")
    script = one(docs, "ConfigMap", "mor-orchestrator")["data"]["submit-run.py"]
    assert script == (CHARTS / "mor-server" / "files" / "submit-run.py").read_text()
    compile(script, "submit-run.py", "exec")


@pytest.mark.parametrize("bad, message", [
    ({"rewardNodes": []}, "rewardNodes"),
    ({"rewardNodes": [{"nodeId": "x", "address": "no-port", "tokenSecret": "t"}]}, "address"),
    ({"orchestrator": {"mode": "daemon"}}, "mode"),
    ({"orchestrator": {"run": {"grpo": {"group_size": 1}}}}, "group_size"),
    ({"orchestrator": {"run": {"nodes": []}}}, "propertyName .nodes."),
    ({"sampler": {"backend": "tgi"}}, "backend"),
])
def test_server_schema_rejects_bad_values(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError, match=message):
        render("mor-server", bad)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_runs_as_non_root(case: str) -> None:
    chart, values = CASES[case]
    pods = containers(render(chart, values))
    assert pods
    for spec, container in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
