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


@pytest.mark.parametrize(
    ("args", "code", "names"),
    [
        (["--examples", "0"], 2, "--examples"),
        (["--split", "validation"], 2, "--split"),
        (["--world", "{tmp}"], 3, "--world"),
        (["--policy", "{tmp}"], 3, "--policy"),
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
