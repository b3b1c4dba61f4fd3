"""experiments/router_accuracy.py on a quick demo workdir (real RMs behind real loopback nodes)."""
from __future__ import annotations

import json

import pytest

from services.common.data.world import load_world

from .conftest import script


@pytest.mark.slow
def test_every_router_gets_a_pair_accuracy_on_fresh_pairs(demo_workdir, tmp_path):
    (tmp_path / "world").symlink_to(demo_workdir / "world")
    missing = script("router_accuracy.py", "--workdir", str(tmp_path))  # a world but no RMs
    assert missing.returncode != 0 and "no trained RM for" in missing.stderr and "make demo" in missing.stderr

    proc = script("router_accuracy.py", "--workdir", str(demo_workdir), "--pairs", "30", "--seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]

    world = load_world(demo_workdir / "world")
    names = world.training_clients()
    report = json.loads((demo_workdir / "router_accuracy.json").read_text())
    assert 20 <= report["fresh_pairs"] <= 30 and report["calibration_pairs"] == len(world.calibration_pairs())
    kinds = {"mean", "min", "max", "prototype", "static", "mor", *(f"single:{n}" for n in names)}
    assert set(report["accuracy"]) == kinds
    for kind, acc in report["accuracy"].items():
        assert set(acc) == {"all", *world.benchmarks}
        assert all(len(v) == (2 if kind in ("static", "mor") else 1) for v in acc.values())
        assert all(0.0 <= x <= 1.0 for v in acc.values() for x in v)
    assert "pair accuracy on" in proc.stdout and f"single:{names[0]}" in proc.stdout
