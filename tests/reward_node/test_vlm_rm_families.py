"""The VLM reward model on a Hub-layout checkpoint of every supported family: it scores answers to
images of mixed tilings, trains its LoRA adapters (decoder only) and its head, and a saved RM serves
the same scores."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.common.models import ModelConfig
from services.reward_node.rm.vlm_rm import VlmRM

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3")


@pytest.mark.parametrize("family", FAMILIES)
def test_vlm_rm_scores_trains_and_reloads_on_every_family(family, hub_checkpoint, tmp_path) -> None:
    torch.manual_seed(0)
    rm = VlmRM.fresh(ModelConfig(path=hub_checkpoint(family)), lora_rank=4, lora_alpha=8.0)
    images = [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (110, 60), (30, 60, 220)), None]
    prompts = ["What colour is the shape?", "Which bar is the tallest?", "Say something."]
    prepared = rm.prepare(prompts, images, ["red", "the left one", "hello"])

    scores = rm.raw_scores(prepared)
    scores.sum().backward()
    trained = {n for n, p in rm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert scores.shape == (3,) and torch.isfinite(scores).all() and scores.unique().numel() == 3
    assert "head.weight" in trained and any("lora_" in n for n in trained)
    assert all("vision" not in n and "visual" not in n for n in trained if "lora_" in n)

    rm.eval()
    with torch.no_grad():
        expected = rm.raw_scores(prepared)
    rm.save_extra(tmp_path)
    served = VlmRM.from_architecture(rm.architecture(), tmp_path)
    served.load_persistent_state(rm.persistent_state())
    with torch.no_grad():
        got = served.raw_scores(served.prepare(prompts, images, ["red", "the left one", "hello"]))
    assert torch.allclose(got, expected, atol=1e-5)
