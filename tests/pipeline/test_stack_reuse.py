"""The local stack reuses its SFT policy and client RMs while they were built from the same inputs:
content hashes and configs, not file times (the cache rule itself: test_cache.py)."""
from __future__ import annotations

import os
import subprocess

import pytest
from rich.console import Console

from services.common.config import StackConfig
from services.pipeline.stack import Stack
from services.reward_node.checkpoint import read_metadata


def _mtime(path):
    return path.stat().st_mtime_ns


@pytest.mark.slow
def test_policy_and_rms_are_rebuilt_when_their_inputs_change_not_when_file_times_do(tmp_path):
    cfg = StackConfig(workdir=tmp_path / "local")
    stack = Stack(cfg, quick=True, console=Console(quiet=True))
    world = stack.prepare_world()
    names = world.training_clients()
    stack.prepare_pki(names)
    stack.write_node_configs(world, {n: (1, 2) for n in names})
    policy = stack.prepare_policy(world)
    stack.train_rms(world, names)
    weights = policy / "model.safetensors"
    rm_meta = {n: stack.workdir / "rm" / n / "metadata.json" for n in names}
    first_policy, first_rms = _mtime(weights), {n: _mtime(m) for n, m in rm_meta.items()}

    t = world.root.joinpath("manifest.json").stat().st_mtime + 240  # as if the workdir were copied
    os.utime(world.root / "manifest.json", (t, t))
    stack.prepare_policy(world)
    stack.train_rms(world, names)
    assert _mtime(weights) == first_policy
    assert {n: _mtime(m) for n, m in rm_meta.items()} == first_rms

    other_lr = Stack(cfg.model_copy(update={"rm_train": cfg.rm_train.model_copy(update={"lr": 1e-3})}), quick=True,
                     console=Console(quiet=True))
    other_lr.write_node_configs(world, {n: (1, 2) for n in names})
    other_lr.prepare_policy(world)
    other_lr.train_rms(world, names)
    assert _mtime(weights) == first_policy  # the RMs' training config is not the policy's input
    assert all(_mtime(m) > first_rms[n] for n, m in rm_meta.items())
    second_rms = {n: _mtime(m) for n, m in rm_meta.items()}

    reseeded = Stack(cfg.model_copy(update={"world": cfg.world.model_copy(update={"seed": 1})}), quick=True,
                     console=Console(quiet=True))
    world = reseeded.prepare_world()  # same folder, other content
    reseeded.write_node_configs(world, {n: (1, 2) for n in names})
    reseeded.prepare_policy(world)
    assert _mtime(weights) > first_policy
    reseeded.train_rms(world, names)
    assert all(_mtime(m) > second_rms[n] for n, m in rm_meta.items())



def test_light_rms_train_while_the_sft_runs_and_stop_when_it_fails(tmp_path):
    stack = Stack(StackConfig(workdir=tmp_path / "local"), quick=True, console=Console(quiet=True))
    world = stack.prepare_world()
    names = world.training_clients()
    assert {world.clients[n].rm_arch for n in names} == {"light"}
    stack.prepare_pki(names)
    stack.write_node_configs(world, {n: (1, 2) for n in names})
    seen: dict[str, dict[str, subprocess.Popen]] = {}

    def failing_sft():
        seen["failed"] = dict(stack.rm_training)
        seen["running"] = {n for n, p in stack.rm_training.items() if p.poll() is None}
        raise RuntimeError("the SFT failed")

    with pytest.raises(RuntimeError, match="the SFT failed"):
        stack.train_rms(world, names, alongside=failing_sft)
    # Every light RM was training (started, not yet waited for) while the SFT ran, and none outlives it.
    assert set(seen["failed"]) == seen["running"] == set(names)
    assert all(p.returncode is not None for p in seen["failed"].values()) and stack.rm_training == {}
    assert not any((stack.workdir / "rm" / n / "metadata.json").is_file() for n in names)

    def sft():
        seen["ok"] = dict(stack.rm_training)
        return "the policy"

    assert stack.train_rms(world, names, alongside=sft) == "the policy"
    assert set(seen["ok"]) == set(names) and stack.rm_training == {}
    assert all(p.returncode == 0 for p in seen["ok"].values())
    assert all(read_metadata(stack.workdir / "rm" / n) for n in names)
