"""The local stack reuses its SFT policy and client RMs only while they are newer than what they were made from."""
from __future__ import annotations

import os

import pytest
from rich.console import Console

from services.common.config import StackConfig
from services.orchestrator.stack import Stack, _write_yaml


def _mtime(path):
    return path.stat().st_mtime_ns


def _shift(path, seconds: float) -> None:
    """Move `path`'s modification time by `seconds` (filesystem timestamps can be coarse)."""
    t = path.stat().st_mtime + seconds
    os.utime(path, (t, t))


@pytest.mark.slow
def test_policy_and_rms_are_retrained_when_older_than_their_inputs(tmp_path):
    stack = Stack(StackConfig(workdir=tmp_path / "local"), quick=True, console=Console(quiet=True))
    world = stack.prepare_world()
    manifest = world.root / "manifest.json"
    _shift(manifest, -120)
    names = world.training_clients()
    stack.prepare_pki(names)
    for n in names:
        _write_yaml(stack.configs / f"node-{n}.yaml", stack.node_settings(world, n, 1, 2))

    policy = stack.prepare_policy(world)
    stamp = policy / "sft_report.json"
    stack.train_rms(world, names, policy)
    rm_meta = {n: stack.workdir / "rm" / n / "metadata.json" for n in names}
    first_policy, first_rms = _mtime(stamp), {n: _mtime(m) for n, m in rm_meta.items()}

    stack.prepare_policy(world)
    stack.train_rms(world, names, policy)
    assert _mtime(stamp) == first_policy  # nothing changed: both reused
    assert {n: _mtime(m) for n, m in rm_meta.items()} == first_rms

    _shift(manifest, 240)  # the world was remade after the policy and the RMs
    stack.prepare_policy(world)
    assert _mtime(stamp) > first_policy
    stack.train_rms(world, names, policy)
    assert all(_mtime(m) > first_rms[n] for n, m in rm_meta.items())
