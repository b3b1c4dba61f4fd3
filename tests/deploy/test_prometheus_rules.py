"""deploy/prometheus/rules: promtool checks them, its unit tests pass, and they only name metrics MoR exports."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import COMPOSE_DIR, RULES, RULES_TEST, metric_names, recording_rules

REQUIRED_ALERTS = {
    "MoRRewardNodeDown",      # node down
    "MoRHighErrorRate",       # error rate
    "MoRHighScoreLatency",    # p99 latency
    "MoRKLSpike",             # KL spike
    "MoRRewardCollapse",      # reward collapse
}


def promql_names(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (label values ignored)."""
    return set(re.findall(r"\bmor[_:][a-z0-9_:]+", re.sub(r'"[^"]*"', '""', expr)))


def test_promtool_accepts_the_rules(promtool: str) -> None:
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    n_rules = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {n_rules} rules found" in out.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_unit_tests_catch_a_broken_threshold(promtool: str, tmp_path: Path) -> None:
    """The promtool unit tests bite: an error-rate alert that can no longer fire fails them."""
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    text = RULES.read_text()
    assert "mor:grpc_server_errors:ratio_rate5m > 0.05" in text
    (tmp_path / RULES.name).write_text(text.replace("mor:grpc_server_errors:ratio_rate5m > 0.05",
                                                    "mor:grpc_server_errors:ratio_rate5m > 0.95"))
    out = subprocess.run([promtool, "test", "rules", str(tmp_path / RULES_TEST.name)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "MoRHighErrorRate" in out.stdout + out.stderr


def test_required_alerts_exist_and_are_unit_tested() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert REQUIRED_ALERTS <= set(alerts)
    tested = {t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert REQUIRED_ALERTS <= tested
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name


def test_rules_name_only_exported_metrics() -> None:
    known = metric_names()
    records = recording_rules()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        for name in promql_names(rule["expr"]):
            ok = name in records if ":" in name else name in known
            assert ok, f"{rule.get('alert') or rule.get('record')}: {name} is neither exported nor recorded"
    assert all(re.fullmatch(r"mor:[a-z0-9_]+:[a-z0-9_]+", r) for r in records)


def test_compose_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    shutil.copy(COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(RULES.parent, tmp_path / "rules")
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout  # the rules glob picks the rules, not their unit tests
