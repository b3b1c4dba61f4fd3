"""Typed configuration: YAML loading, errors that name the field, env overrides, redaction."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from services.common.config import (
    CONFIG_KINDS,
    ConfigError,
    NodeEndpoint,
    OrchestratorSettings,
    RewardNodeSettings,
    RunConfig,
    SamplerSettings,
    StackConfig,
    TLSSection,
    describe_fields,
    load_yaml,
    redacted_dump,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_literal_error_names_dotted_field_and_allowed_values(tmp_path):
    path = write(tmp_path, {"grpo": {"loss_type": "ppo", "group_size": 1}})

    with pytest.raises(ConfigError) as err:
        load_yaml(RunConfig, path)

    msg = str(err.value)
    assert "grpo.loss_type" in msg and "'dapo'" in msg and "'ppo'" in msg
    assert "grpo.group_size" in msg and "greater than or equal to 2" in msg
    assert str(path) in msg


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, {"grpo": {"gruop_size": 4}})

    with pytest.raises(ConfigError, match=r"grpo\.gruop_size"):
        load_yaml(RunConfig, path)


def test_router_kind_validated_and_single_must_name_a_node(tmp_path):
    with pytest.raises(ConfigError, match="router.kind.*allowed: mor"):
        load_yaml(RunConfig, write(tmp_path, {"router": {"kind": "median"}}))
    nodes = [{"node_id": "clinic", "address": "127.0.0.1:5000"}]
    with pytest.raises(ConfigError, match="names no configured node"):
        load_yaml(RunConfig, write(tmp_path, {"router": {"kind": "single:bank"}, "nodes": nodes}))
    ok = load_yaml(RunConfig, write(tmp_path, {"router": {"kind": "single:clinic"}, "nodes": nodes}))
    assert ok.router.kind == "single:clinic"


def test_duplicate_nodes_and_quorum_above_node_count_rejected(tmp_path):
    node = {"node_id": "a", "address": "127.0.0.1:1"}
    with pytest.raises(ConfigError, match="duplicate node_id a"):
        load_yaml(RunConfig, write(tmp_path, {"nodes": [node, node]}))
    with pytest.raises(ConfigError, match="min_nodes=2 exceeds"):
        load_yaml(RunConfig, write(tmp_path, {"nodes": [node], "fanout": {"min_nodes": 2}}))


def test_bad_address_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nodes\.0\.address.*host:port"):
        load_yaml(RunConfig, write(tmp_path, {"nodes": [{"node_id": "a", "address": "nowhere"}]}))


def test_loopback_endpoint_is_plaintext_on_127_0_0_1_and_validated():
    ep = NodeEndpoint.loopback("clinic", 50123, timeout_s=7.5)
    assert (ep.node_id, ep.address, ep.tls.insecure, ep.timeout_s) == ("clinic", "127.0.0.1:50123", True, 7.5)
    with pytest.raises(ValidationError, match="node_id"):
        NodeEndpoint.loopback("Not An Id", 1)


def test_loopback_node_settings_merge_model_entries_and_keep_the_loopback_transport(tmp_path):
    s = RewardNodeSettings.loopback("bank", "vlm", tmp_path, model={"torch_threads": 4}, data_dir=tmp_path)
    assert (s.model.kind, s.model.checkpoint, s.model.torch_threads, s.data_dir) == ("vlm", tmp_path, 4, tmp_path)
    assert (s.server.host, s.server.port, s.tls.insecure, s.metrics.enabled) == ("127.0.0.1", 0, True, False)
    assert RewardNodeSettings.loopback("bank", "light", None).model.torch_threads == 1


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.grpo.group_size = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    "tls, message",
    [
        ({"insecure": True, "cert": "c.pem"}, "cannot be combined with cert"),
        ({"cert": "c.pem"}, "cert and key must be given together"),
        ({"cert": "c.pem", "key": "k.pem", "require_client_auth": True}, "needs ca_cert"),
    ],
)
def test_tls_section_consistency(tls, message):
    with pytest.raises(ValueError, match=message):
        TLSSection(**tls)


def test_tls_server_needs_cert_unless_insecure_and_files_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="tls.cert and tls.key are required"):
        TLSSection().check_files("server")
    TLSSection(insecure=True).check_files("server")
    with pytest.raises(ConfigError, match="tls.key: file not found"):
        (tmp_path / "c.pem").write_text("x")
        TLSSection(cert=tmp_path / "c.pem", key=tmp_path / "missing.pem").check_files("server")


def test_env_overrides_yaml_for_service_settings(tmp_path, monkeypatch):
    path = write(tmp_path, {"node_id": "clinic", "server": {"port": 5000}, "tls": {"insecure": True}})
    monkeypatch.setenv("MOR_REWARD_NODE__SERVER__PORT", "6001")

    cfg = load_yaml(RewardNodeSettings, path)

    assert cfg.server.port == 6001  # env wins
    assert cfg.tls.insecure is True  # yaml kept where env is silent
    assert cfg.node_id == "clinic"


def test_env_override_validated_with_field_name(tmp_path, monkeypatch):
    path = write(tmp_path, {"backend": "hf"})
    monkeypatch.setenv("MOR_SAMPLER__BACKEND", "tensorrt")

    with pytest.raises(ConfigError, match=r"backend: Input should be 'hf' or 'vllm'"):
        load_yaml(SamplerSettings, path)


def test_secrets_redacted_in_dump(tmp_path):
    cfg = load_yaml(RunConfig, write(tmp_path, {"nodes": [{"node_id": "a", "address": "127.0.0.1:1", "auth": {"token": "s3cret"}}]}))

    dump = redacted_dump(cfg)

    assert "s3cret" not in repr(dump)
    assert dump["nodes"][0]["auth"]["token"] == "**********"
    assert cfg.nodes[0].auth.token.get_secret_value() == "s3cret"


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(RunConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(RunConfig, tmp_path / "list.yaml")


@pytest.mark.parametrize("kind", sorted(CONFIG_KINDS))
def test_every_field_documented(kind):
    rows = describe_fields(CONFIG_KINDS[kind])

    undocumented = [name for name, _t, _d, desc in rows if not desc.strip()]
    assert rows and not undocumented, undocumented


def test_example_configs_load():
    stack = load_yaml(StackConfig, EXAMPLES / "local.yaml")
    assert len(stack.world.clients) == 3
    # The three experts ground light RMs (which train beside the SFT); the held-out client keeps the VLM RM kind.
    assert {c.rm_arch for c in stack.world.clients} == {"light"}
    assert {c.rm_arch for c in stack.world.all_clients()} == {"vlm", "light"}
    assert stack.sft.num_threads == 1  # one SFT start whatever the machine's core count
    load_yaml(RewardNodeSettings, EXAMPLES / "reward_node.yaml")
    load_yaml(SamplerSettings, EXAMPLES / "sampler.yaml")
    run = load_yaml(RunConfig, EXAMPLES / "run.yaml")
    assert len(run.nodes) == 3
    orchestrator = load_yaml(OrchestratorSettings, EXAMPLES / "orchestrator.yaml")
    assert orchestrator.node_tls.cert is not None
