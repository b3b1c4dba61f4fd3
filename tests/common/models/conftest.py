"""Shared fixtures of the model-layer tests: tiny VLMs (built once per session) and small images."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm
from services.common.models.vlm import VLM

ARCHS = ("qwen2_vl", "llava")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run as fast on one thread, and a shared 2-core box with other jobs on it makes
    two spinning OpenMP threads 5-15x slower. Restored after each test (torch threads are global)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", params=ARCHS)
def tiny_vlm(request: pytest.FixtureRequest) -> VLM:
    """A tiny random VLM per architecture. Tests must not train it (build their own for that)."""
    vlm = build_vlm(ModelConfig(arch=request.param, preset="tiny", seed=0))
    vlm.eval()
    return vlm


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Four 64x64 RGB images, one of them non-square (exercises resizing and token counts)."""
    return [
        Image.new("RGB", (64, 64), (220, 30, 30)),
        Image.new("RGB", (64, 64), (30, 60, 220)),
        Image.new("RGB", (64, 64), (30, 180, 40)),
        Image.new("RGB", (80, 48), (240, 220, 30)),
    ]


@pytest.fixture(scope="session")
def questions() -> list[str]:
    return [
        "What colour is the shape?",
        "How many circles are there?",
        "Which bar is the tallest?",
        "What colour is the background of this small picture?",
    ]
