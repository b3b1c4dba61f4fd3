"""Supervised warm start: schedule, parameter groups, and learning a trivial colour task."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from services.common.data.answers import normalize_answer
from services.common.models.config import ModelConfig, SFTConfig
from services.common.models.factory import build_vlm
from services.common.models.sft import SFTExample, greedy_accuracy, lr_factor, param_groups, sft_train

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 215, 30)}


def colour_examples(n: int, seed: int) -> list[SFTExample]:
    """Solid-colour 64x64 images with pixel noise; the answer is the colour's name."""
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        name = rng.choice(sorted(COLOURS))
        pixels = np.clip(np.array(COLOURS[name]) + gen.integers(-25, 26, size=(64, 64, 3)), 0, 255)
        out.append(SFTExample(Image.fromarray(pixels.astype(np.uint8)), "What colour is the image?", name))
    return out


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = SFTConfig(steps=100, warmup=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    lin = SFTConfig(steps=100, warmup=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, lin) == pytest.approx(0.5)
    assert lr_factor(7, SFTConfig(steps=100, warmup=0, schedule="constant")) == 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = build_vlm(ModelConfig()).model
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


@pytest.mark.parametrize("text", ["Red.", " red ", "RED!", "red"])
def test_normalize_answer(text):
    assert normalize_answer(text) == "red"


def test_sft_learns_a_trivial_colour_task():
    train, test = colour_examples(256, seed=0), colour_examples(64, seed=1)
    vlm = build_vlm(ModelConfig(arch="qwen2_vl", preset="tiny", seed=0))
    before = greedy_accuracy(vlm, test)
    cfg = SFTConfig(steps=120, batch_size=16, lr=3e-3, warmup=10, eval_every=60, num_threads=1)
    result = sft_train(vlm, train, cfg, eval_fn=lambda v: {"em": greedy_accuracy(v, test)}, progress=False)
    assert before <= 0.3
    assert result.losses[-1][1] < 0.5 * result.losses[0][1]
    assert [s for s, _ in result.evals] == [60, 120]
    assert result.last_eval["em"] >= 0.9
    assert result.step_time_s > 0 and not vlm.model.training


def test_sft_reduces_loss_on_llava():
    train = colour_examples(64, seed=2)
    vlm = build_vlm(ModelConfig(arch="llava", preset="tiny", seed=0))
    result = sft_train(vlm, train, SFTConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, log_every=5, num_threads=1), progress=False)
    assert result.losses[-1][1] < 0.5 * result.losses[0][1]


def test_the_vision_warm_up_runs_on_the_configured_threads_and_restores_the_process_setting(monkeypatch):
    from types import SimpleNamespace

    import torch

    import services.pipeline.sft as pipeline_sft

    seen = []
    real = pipeline_sft.vision_warmup

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_sft, "vision_warmup", spy)
    train = colour_examples(16, seed=3)
    images = SimpleNamespace(load_image=lambda key: train[int(key)].image)
    examples = [SimpleNamespace(image=str(i), question=ex.question, canonical_answer=ex.answer)
                for i, ex in enumerate(train)]
    vlm = build_vlm(ModelConfig(arch="qwen2_vl", preset="tiny", seed=0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pipeline_sft.warm_up_vision(vlm, images, SFTConfig(vision_warmup_steps=2, num_threads=1), examples=examples)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
