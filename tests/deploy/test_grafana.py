"""deploy/grafana: the MoR dashboard JSON and the compose stack's Grafana provisioning."""
from __future__ import annotations

import json
from typing import Any

import yaml

from tests.deploy.conftest import COMPOSE_DIR, DASHBOARD, metric_names, recording_rules
from tests.deploy.test_prometheus_rules import promql_names

REQUIRED_PANELS = {
    "Step time by phase": "mor:orchestrator_step_phase_seconds:mean5m",
    "Reward per node (raw mean score)": "mor_orchestrator_node_mean_score",
    "Router weights": "mor_orchestrator_node_weight_ratio",
    "KL to reference": "mor_orchestrator_grpo_kl_nats",
    "Node Score latency": "mor:grpc_server_latency_seconds:p99_5m",
    "Node errors": "mor:grpc_server_errors:ratio_rate5m",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_is_valid_json_with_unique_ids() -> None:
    d = dashboard()
    assert d["uid"] == "mor-overview" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["templating"]["list"][0]["type"] == "datasource"


def test_required_panels_show_the_right_series() -> None:
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    for title, series in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        assert series in by_title[title], f"{title!r} does not plot {series}"


def test_every_query_names_an_exported_metric_or_recording_rule() -> None:
    known, records = metric_names(), recording_rules()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_names(target["expr"])
            assert names or target["expr"].startswith("up{"), f"{panel['title']}: no MoR series in {target['expr']!r}"
            for name in names:
                assert (name in records) if ":" in name else (name in known), f"{panel['title']}: unknown {name}"
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    ds = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/prometheus.yml").read_text())
    source = ds["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["uid"] == dashboard()["templating"]["list"][0]["current"]["value"]
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/mor.yml").read_text())["providers"]
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") == 2 else v.split(":") for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana"] == providers[0]["options"]["path"]
    assert (COMPOSE_DIR / "../grafana" / DASHBOARD.name).resolve() == DASHBOARD.resolve()
