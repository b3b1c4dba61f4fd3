"""Shared fixtures: one tiny world per session (a few seconds to make)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.data.config import WorldConfig
from services.common.data.world import World, load_world
from services.common.data.world_writer import make_world


@pytest.fixture(scope="session")
def small_cfg() -> WorldConfig:
    return WorldConfig.small(seed=7)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory, small_cfg: WorldConfig) -> Path:
    out = tmp_path_factory.mktemp("worlds") / "w7"
    make_world(small_cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def world(world_dir: Path) -> World:
    return load_world(world_dir)
