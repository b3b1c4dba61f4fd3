"""A peft LoRA-wrapped model works through VLM unchanged (the GRPO trainer's set-up)."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm
from services.common.models.vlm import VLM

LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_lora_policy_generates_scores_and_disables_to_the_reference(arch, questions, images):
    plain = build_vlm(ModelConfig(arch=arch, seed=9))
    with torch.no_grad():
        ref = plain.sequence_logprobs(questions, images, [[300, 301, 2]] * len(questions))
    peft_model = get_peft_model(plain.model, LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # a trained adapter: the policy now differs from the reference
    policy = VLM(peft_model, plain.tokenizer, plain.image_processor)
    assert policy.num_parameters(trainable_only=True) < policy.num_parameters()

    out = policy.generate(questions, images, num_return_sequences=2, max_new_tokens=6, seed=0)
    flat = [g for group in out for g in group]
    qs = [q for q in questions for _ in range(2)]
    ims = [im for im in images for _ in range(2)]
    with torch.no_grad():
        again = policy.sequence_logprobs(qs, ims, [g.token_ids for g in flat])
        moved = policy.sequence_logprobs(questions, images, [[300, 301, 2]] * len(questions))
        with policy.adapter_disabled():
            back = policy.sequence_logprobs(questions, images, [[300, 301, 2]] * len(questions))
    assert max((a - torch.tensor(g.logprobs)).abs().max().item() for a, g in zip(again, flat, strict=True)) < 1e-4
    assert any(not torch.allclose(m, r, atol=1e-4) for m, r in zip(moved, ref, strict=True))
    for b, r in zip(back, ref, strict=True):
        torch.testing.assert_close(b, r, atol=1e-5, rtol=0)
