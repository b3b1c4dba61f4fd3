"""Fixtures of the pipeline tests: the reward-node tests' modest world (for the baseline RMs)."""
from __future__ import annotations

from tests.reward_node.conftest import world_dir  # noqa: F401 (a fixture, registered here by its import)
