"""Stage-1 vision warm-up: the tower learns to separate answers; the language model is untouched."""
from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm
from services.common.models.vision_warmup import encode, image_features, vision_warmup

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 40), "yellow": (240, 220, 30)}


def colour_set(n: int, seed: int = 0):
    rng = random.Random(seed)
    names = [rng.choice(list(COLOURS)) for _ in range(n)]
    images = [Image.new("RGB", (64, 64), tuple(min(255, c + rng.randint(-20, 20)) for c in COLOURS[k])) for k in names]
    return images, ["What colour is the picture?"] * n, names


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_warmup_learns_answers_and_touches_only_the_vision_side(arch):
    vlm = build_vlm(ModelConfig(arch=arch, preset="tiny", seed=1))
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    examples = encode(vlm, *colour_set(64))

    result = vision_warmup(vlm, examples, steps=60, batch_size=16, lr=3e-3, progress=False)

    assert result.classes == 4
    assert result.losses[-1][1] < result.losses[0][1]
    assert result.train_accuracy > 0.6  # chance is 0.25
    changed = {n for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(any(k in n for k in ("visual", "vision_tower", "multi_modal_projector")) for n in changed)


def test_image_features_one_entry_per_image():
    vlm = build_vlm(ModelConfig(preset="tiny"))
    ex = encode(vlm, *colour_set(3))

    feats = image_features(vlm, torch.cat([e.pixel_values for e in ex]), torch.cat([e.image_grid_thw for e in ex]))

    assert len(feats) == 3 and feats[0].shape[-1] == vlm.model.config.text_config.hidden_size


def test_warmup_rejects_empty_input():
    vlm = build_vlm(ModelConfig(preset="tiny"))
    with pytest.raises(ValueError, match="needs examples"):
        vision_warmup(vlm, [], steps=10)
