"""`mor eval`: a tiny policy on a tiny world, the JSON it prints and writes, and its option errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from services.common.data import WorldConfig, make_world
from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm

from .test_cli import mor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    make_world(WorldConfig.small(seed=5, noisy_client=False), root / "world", progress=False)
    build_vlm(ModelConfig(preset="tiny", seed=0)).save(root / "policy")
    return root / "policy", root / "world"


def test_eval_prints_and_writes_accuracy_format_and_client_preferences(tiny, tmp_path):
    policy, world = tiny

    proc = mor("eval", "--policy", str(policy), "--world", str(world), "--examples", "4", "--out", str(tmp_path / "r.json"))

    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert set(printed["benchmarks"]) == {"charts", "digits", "shapes"}
    for row in printed["benchmarks"].values():
        assert row["n"] == 4
        assert all(0.0 <= row[k] <= 1.0 for k in ("exact_match", "vqa_accuracy", "format_ok"))
    assert set(printed["client_preference"]) == {"clinic", "bank", "school", "lab"}
    assert all(math.isfinite(v) for v in printed["client_preference"].values())
    assert printed["split"] == "test"
    assert "VQA acc" in proc.stderr and "oracle preference" in proc.stderr  # the table goes to stderr


def test_eval_against_a_baseline_compares_the_same_examples_pair_by_pair(tiny, tmp_path):
    policy, world = tiny
    other = tmp_path / "other"
    build_vlm(ModelConfig(preset="tiny", seed=1)).save(other)

    proc = mor("eval", "--policy", str(policy), "--world", str(world), "-n", "6", "--baseline", str(other))
    same = mor("eval", "--policy", str(policy), "--world", str(world), "-n", "6", "--baseline", str(policy))

    assert proc.returncode == 0 and same.returncode == 0, proc.stderr + same.stderr
    report, self_report = json.loads(proc.stdout), json.loads(same.stdout)
    assert report["baseline"]["policy"] == str(other)
    for b, row in report["benchmarks"].items():
        paired, base = report["paired"][b], report["baseline"]["benchmarks"][b]
        assert paired["turned_right"] - paired["turned_wrong"] == round(6 * (row["exact_match"] - base["exact_match"]))
        assert paired["preference_change"] == pytest.approx(row["preference"] - base["preference"])
        assert paired["exact_match_change"] == pytest.approx(row["exact_match"] - base["exact_match"])
        assert self_report["paired"][b] == {"turned_right": 0, "turned_wrong": 0, "exact_match_change": 0.0,
                                            "exact_match_se": 0.0, "preference_change": 0.0, "preference_se": 0.0}
    assert "turned right / wrong" in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "names"),
    [
        (["--examples", "0"], 2, "--examples"),
        (["--split", "validation"], 2, "--split"),
        (["--world", "{tmp}"], 3, "--world"),
        (["--policy", "{tmp}"], 3, "--policy"),
        (["--baseline", "{tmp}"], 3, "--baseline"),
    ],
)
def test_eval_option_errors_name_the_option_without_a_traceback(tiny, tmp_path, args, code, names):
    policy, world = tiny
    base = {"--policy": str(policy), "--world": str(world)}
    given = dict(zip(args[::2], [a.format(tmp=tmp_path) for a in args[1::2]], strict=True))
    argv = [x for k, v in {**base, **given}.items() for x in (k, v)]

    proc = mor("eval", *argv)

    assert proc.returncode == code
    assert names in proc.stderr and "Traceback" not in proc.stderr
