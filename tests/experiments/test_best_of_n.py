"""experiments/best_of_n.py: the pick rules on hand-made groups, and the script on a quick demo workdir."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from services.common.data.world import load_world

from .conftest import ROOT, script

_spec = importlib.util.spec_from_file_location("best_of_n", ROOT / "experiments" / "best_of_n.py")
best_of_n = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(best_of_n)


def test_the_pick_takes_each_groups_highest_score():
    right = torch.tensor([[False, True, False], [True, False, False]])
    scores = torch.tensor([[0.1, 0.9, 0.2], [0.0, 0.5, 0.1]])  # right in group 0, wrong in group 1

    assert best_of_n.pick_accuracy(scores, right) == 0.5
    assert best_of_n.pick_accuracy(right.float(), right) == 1.0


def test_within_group_correlation_counts_mixed_groups_only():
    right = torch.tensor([[True, False], [True, True], [False, True]])
    agree = torch.tensor([[1.0, 0.0], [3.0, -3.0], [0.0, 1.0]])  # group 1 has no wrong answer: left out

    assert best_of_n.within_group_corr(agree, right) == pytest.approx(1.0)
    assert best_of_n.within_group_corr(-agree, right) == pytest.approx(-1.0)
    assert torch.isnan(torch.tensor(best_of_n.within_group_corr(agree[1:2], right[1:2])))


def test_style_shares_label_each_answer_once():
    shares = best_of_n.style_shares(["7 because the digit is 7", "7", "seven", "odd", "", "8 because it is"])

    assert shares == pytest.approx({"justified": 2 / 6, "digits": 1 / 6, "word": 1 / 6, "digits/word": 1 / 6,
                                    "malformed": 1 / 6})


@pytest.mark.slow
def test_the_script_reports_every_pick_rule_per_benchmark(demo_workdir, tmp_path):
    out = tmp_path / "bon.json"
    proc = script("best_of_n.py", "--workdir", str(demo_workdir), "--examples", "4", "--n", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]

    world = load_world(demo_workdir / "world")
    report = json.loads(out.read_text())["benchmarks"]
    assert set(report) == set(world.benchmarks)
    rules = {"home RM", "mean of RMs", "true preference", *(f"rm:{n}" for n in world.training_clients())}
    for r in report.values():
        assert r["n_questions"] == 4 and set(r["best_of_n"]) == set(r["corr_in_mixed"]) == rules
        # pass@n bounds every pick: no rule picks a right answer from a group without one.
        assert all(0.0 <= a <= r["pass@n"] + 1e-9 for a in r["best_of_n"].values())
        assert r["sampled"] <= r["pass@n"] + 1e-9 and 1.0 <= r["distinct_answers"] <= 3.0
        assert sum(r["styles"].values()) == pytest.approx(1.0)
