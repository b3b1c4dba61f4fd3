"""The one way a VLM gets LoRA adapters: the GRPO trainer, LoRA SFT and the VLM reward model.

By default adapters go on the language model's attention and MLP projections and never on the
vision tower: a pretrained tower already sees, and the few thousand preference pairs or rollouts a
run has are better spent on how the model answers. Putting them in the tower is a deliberate choice
a config makes by widening ``target_modules`` (e.g. adding ``vision_model|visual``).
"""
from __future__ import annotations

import warnings

import torch

from services.common.models.config import LANGUAGE_MODEL_TARGETS
from services.common.models.vlm import seeded


def add_lora(model: torch.nn.Module, *, rank: int, alpha: float, target_modules: str = LANGUAGE_MODEL_TARGETS,
             adapter_name: str = "default", seed: int | None = None) -> torch.nn.Module:
    """``model`` wrapped with fresh LoRA adapters (peft); only the adapters are trainable.

    peft draws lora_A from torch's global RNG: ``seed`` makes the draw reproducible without
    touching the caller's RNG state.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, bias="none")
    device = next(model.parameters()).device
    with warnings.catch_warnings(), seeded(seed, device):
        # peft (0.21) asks transformers (5.x) a deprecated question on every get_peft_model.
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return get_peft_model(model, config, adapter_name=adapter_name)
        except ValueError as err:  # peft: "Target modules ... not found in the base model"
            raise ValueError(f"LoRA target_modules {target_modules!r} match no module of "
                             f"{type(model).__name__}: {str(err)[:200]}") from None


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with its LoRA update folded into the base weights (what a checkpoint stores)."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model


__all__ = ["LANGUAGE_MODEL_TARGETS", "add_lora", "merged"]
