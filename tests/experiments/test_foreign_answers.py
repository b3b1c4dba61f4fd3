"""experiments/foreign_answers.py on a quick demo workdir: each client RM against answers that do not fit the question."""
from __future__ import annotations

import json

import pytest

from services.common.data.world import load_world

from .conftest import script


@pytest.mark.slow
def test_every_client_rm_is_probed_with_foreign_answers(demo_workdir, tmp_path):
    bad = script("foreign_answers.py", "--workdir", str(demo_workdir), "--rm", "nobody=/x")
    assert bad.returncode != 0 and "--rm 'nobody=/x': expected NODE=DIR" in bad.stderr

    out = tmp_path / "foreign.json"
    proc = script("foreign_answers.py", "--workdir", str(demo_workdir), "--examples", "12", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    world = load_world(demo_workdir / "world")
    report = json.loads(out.read_text())
    assert set(report) == set(world.training_clients())
    for node, r in report.items():
        assert r["home"] == world.clients[node].home and 1 <= r["examples"] <= 12
        assert 0.0 <= r["foreign_above_right"] <= 1.0 and 0.0 <= r["foreign_above_wrong"] <= 1.0
        assert f"{node} ({r['home']}" in proc.stdout
