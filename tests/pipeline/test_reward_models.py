"""What a pipeline RM is cached under (services/pipeline/reward_models.py rm_inputs)."""
from __future__ import annotations

from services.pipeline import cache
from services.pipeline.reward_models import rm_inputs
from services.reward_node.rm import LightRM
from tests.reward_node.conftest import node_settings


def test_a_light_rm_is_keyed_by_its_default_architecture(world_dir, monkeypatch):
    """A new default image pathway retrains a cached light RM; its training config alone would not say so."""
    settings = node_settings(node_id="clinic", data_dir=str(world_dir))
    cells = rm_inputs(settings, world_dir, ["clinic"])
    assert cells["architecture"]["pathway"] == "cells"

    monkeypatch.setattr(LightRM, "build", classmethod(lambda cls, section: cls(pathway="flat")))
    flat = rm_inputs(settings, world_dir, ["clinic"])
    assert flat["architecture"]["pathway"] == "flat" and cache.digest(flat) != cache.digest(cells)
