"""Reward-model architectures of a node, behind one abstract base (base.RewardModel).

    light   light.LightRM   frozen MiniLM text embeddings + small image CNN + fusion MLP
    vlm     vlm_rm.VlmRM    factory VLM backbone (LoRA while training) + scalar head

``RM_KINDS`` is the one name -> class table; ``build_rm`` makes a fresh, trainable model from the
node's model section. Loading a trained one goes through services.reward_node.checkpoint.
"""
from __future__ import annotations

from services.common.config.services import RewardModelSection
from services.reward_node.rm.base import Prepared, RewardModel
from services.reward_node.rm.light import LightRM
from services.reward_node.rm.vlm_rm import VlmRM

RM_KINDS: dict[str, type[RewardModel]] = {"light": LightRM, "vlm": VlmRM}


def rm_class(kind: str) -> type[RewardModel]:
    """The class registered for ``kind``; an unknown kind raises with the supported list."""
    try:
        return RM_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown reward-model kind {kind!r}; supported: {', '.join(RM_KINDS)}") from None


def build_rm(section: RewardModelSection) -> RewardModel:
    """A fresh, trainable RM of ``section.kind`` (random head; the VLM backbone from ``section.backbone``)."""
    if section.kind == "vlm":
        return VlmRM.fresh(section.backbone, section.lora_rank, section.lora_alpha)
    return rm_class(section.kind)()


__all__ = ["RM_KINDS", "LightRM", "Prepared", "RewardModel", "VlmRM", "build_rm", "rm_class"]
