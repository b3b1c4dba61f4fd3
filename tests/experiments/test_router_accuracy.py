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
    assert 20 <= report["pairs"] <= 30 and report["router_pairs"] == len(world.router_pairs())
    kinds = {"mean", "min", "max", "prototype", "static", "mor", "oracle", *(f"single:{n}" for n in names)}
    assert set(report["routers"]) == set(report["by_benchmark"]) == kinds
    assert all(0.0 <= a <= 1.0 for a in report["routers"].values())
    for kind, acc in report["by_benchmark"].items():
        assert set(acc) == {"all", *world.benchmarks} and acc["all"] == report["routers"][kind]
    assert report["router_pair_styles"] == world.config.router_pair_styles
    assert sum(report["pair_kinds"].values()) == report["pairs"] and "correctness" in report["pair_kinds"]
    assert set(report["by_kind"]) == kinds and all(set(v) == set(report["pair_kinds"]) for v in report["by_kind"].values())
    assert set(report["mor_minus"]) == kinds - {"mor"} and all(v["se"] >= 0 for v in report["mor_minus"].values())
    for kind, v in report["mor_minus"].items():  # the paired mean difference is the difference of the accuracies
        assert v["diff"] == pytest.approx(report["routers"]["mor"] - report["routers"][kind], abs=1e-6)
    assert set(report["per_seed"]) == {"static", "mor"} and all(len(v) == 2 for v in report["per_seed"].values())
    # The oracle takes each benchmark's accuracy from its home client's RM.
    want: dict[str, str] = {}
    for n in names:
        want.setdefault(world.clients[n].home, n)
    assert report["homes"] == want
    for b, home in report["homes"].items():
        assert report["by_benchmark"]["oracle"][b] == report["by_benchmark"][f"single:{home}"][b]
    assert set(report["nodes"]) == set(names) and all(set(v) == set(world.benchmarks) for v in report["nodes"].values())
    assert "pair accuracy on" in proc.stdout and f"single:{names[0]}" in proc.stdout and "oracle" in proc.stdout
