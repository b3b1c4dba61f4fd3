"""experiments/router_accuracy.py on a quick stack workdir (real RMs behind real loopback nodes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from services.common.config import StackConfig
from services.orchestrator.stack import Stack, _write_yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _script(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "experiments/router_accuracy.py", "--workdir", str(workdir), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_router_gets_a_pair_accuracy_on_fresh_pairs(tmp_path):
    stack = Stack(StackConfig(workdir=tmp_path / "local"), quick=True, console=Console(quiet=True))
    world = stack.prepare_world()
    names = world.training_clients()
    proc = _script(stack.workdir)  # no RMs yet
    assert proc.returncode != 0 and "no trained RM for" in proc.stderr and "make demo" in proc.stderr

    stack.prepare_pki(names)
    for n in names:
        _write_yaml(stack.configs / f"node-{n}.yaml", stack.node_settings(world, n, 1, 2))
    stack.train_rms(world, names, stack.prepare_policy(world))
    proc = _script(stack.workdir, "--pairs", "30", "--seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads((stack.workdir / "router_accuracy.json").read_text())
    assert 20 <= report["fresh_pairs"] <= 30 and report["calibration_pairs"] == len(world.calibration_pairs())
    kinds = {"mean", "min", "max", "prototype", "static", "mor", *(f"single:{n}" for n in names)}
    assert set(report["accuracy"]) == kinds
    for kind, acc in report["accuracy"].items():
        assert set(acc) == {"all", *world.benchmarks}
        assert all(len(v) == (2 if kind in ("static", "mor") else 1) for v in acc.values())
        assert all(0.0 <= x <= 1.0 for v in acc.values() for x in v)
    assert "pair accuracy on" in proc.stdout and "single:clinic" in proc.stdout
