"""Every supported VLM family served from a Hub-layout checkpoint folder: the sampler generates with
images, takes the GRPO trainer's LoRA push, and then samples exactly what the trainer computes."""
from __future__ import annotations

import pytest
import torch

from services.common.config.run import GRPOSection
from services.common.models import ModelConfig, load_vlm
from services.orchestrator.grpo.trainer import GRPOTrainer
from services.policy_sampler.client import SamplerPrompt

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_of_every_family_is_served_and_takes_the_trainers_lora_push(
        family, hub_checkpoint, serve, arun, red, chart, tools) -> None:
    path = hub_checkpoint(family)
    trainer = GRPOTrainer(load_vlm(path), GRPOSection(lora_rank=4, lr=1e-2), seed=0)
    prompts = [SamplerPrompt("a", "What colour is the shape?", red), SamplerPrompt("b", "Which bar is the tallest?", chart)]
    policy = trainer.policy

    async def scenario():
        async with serve(model=ModelConfig(path=path), limits={"max_prompt_chars": 200, "max_image_bytes": 64 * 1024}) as running:
            before = await running.client.generate(prompts, 2, seed=1)
            # A trained adapter: move its B matrices off zero so the push changes what is sampled.
            with torch.no_grad():
                for name, p in policy.model.named_parameters():
                    if "lora_B" in name:
                        p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
            await running.client.push_peft_model(1, policy.model)
            after = await running.client.generate(prompts, 2, seed=1)
            return before, after

    before, after = arun(scenario(), timeout=120)

    questions = [p.text for p in prompts for _ in range(2)]
    images = [p.image for p in prompts for _ in range(2)]
    samples = [s for g in after.groups for s in g]
    assert before.policy_version == 0 and after.policy_version == 1
    assert tools.max_abs_diff(tools.recompute(policy, questions, images, [s.token_ids for s in samples]),
                              [s.logprobs for s in samples]) < 1e-4
