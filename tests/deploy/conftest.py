"""Shared helpers of the deploy tests: repository paths, external tools, Helm rendering.

The Helm charts are rendered with Helm's own Go engine through helm-python-sdk (a wheel that bundles
libhelm, no helm binary and no cluster), and every manifest is checked against the Kubernetes JSON
schemas that kubernetes-validate ships (offline). promtool and prometheus come from Debian's
`prometheus` package, which .ci/run installs; without them those tests skip and say so.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHARTS = DEPLOY / "helm"
COMPOSE_DIR = DEPLOY / "compose"
RULES = DEPLOY / "prometheus" / "rules" / "mor.rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules" / "mor.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "mor-dashboard.json"
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes release still commonly supported; schemas ship for 1.25-1.37


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install Debian package {package} (.ci/run does)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool("prometheus", "prometheus")


def render(chart: str, values: dict[str, Any] | None = None, *, name: str = "mor",
           namespace: str = "mor") -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt and empty documents left out)."""
    from helm_python.chart import Chart

    with Chart.load(CHARTS / chart) as c:
        out = c.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(chart: str, values: dict[str, Any] | None = None, *, name: str = "mor") -> str:
    from helm_python.chart import Chart

    with Chart.load(CHARTS / chart) as c:
        out = c.render(values or {}, name=name, namespace="mor", is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def metric_names() -> set[str]:
    """Every sample name MoR exports (counters with _total, histograms with _bucket/_sum/_count)."""
    from services.common import metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def recording_rules() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}
