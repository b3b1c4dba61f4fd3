"""Resumable run checkpoints: everything a run needs to continue exactly where it stopped.

    <output_dir>/checkpoints/step-000010/
        run.json     step, policy version, prompt-stream position, calibration stats (plain JSON)
        state.pt     trainer (trainable weights + optimizer), router, RNG states (torch.save)
    <output_dir>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, and ``latest`` is
replaced atomically after it, so a crash mid-write leaves the previous checkpoint in force.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing or unreadable; the message names the path."""


@dataclass
class Checkpoint:
    """What a run saves and restores."""

    step: int
    policy_version: int
    stream: dict[str, int]
    calibration: dict[str, Any]
    trainer: dict[str, Any]
    router: dict[str, Any]
    rng: dict[str, Any]


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(output_dir: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write ``ckpt`` as step-NNNNNN, point ``latest`` at it, keep the newest ``keep`` checkpoints."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{ckpt.step:06d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"step": ckpt.step, "policy_version": ckpt.policy_version, "stream": ckpt.stream,
            "calibration": ckpt.calibration}
    (tmp / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    torch.save({"trainer": ckpt.trainer, "router": ckpt.router, "rng": ckpt.rng}, tmp / "state.pt")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    pointer = checkpoint_dir(output_dir) / LATEST
    if not pointer.is_file():
        return None
    path = checkpoint_dir(output_dir) / pointer.read_text().strip()
    return path if path.is_dir() else None


def load(path: Path) -> Checkpoint:
    try:
        meta = json.loads((path / "run.json").read_text())
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return Checkpoint(step=meta["step"], policy_version=meta["policy_version"], stream=meta["stream"],
                      calibration=meta["calibration"], trainer=state["trainer"], router=state["router"],
                      rng=state["rng"])


__all__ = ["Checkpoint", "CheckpointError", "checkpoint_dir", "latest", "load", "rng_state", "save", "set_rng_state"]
