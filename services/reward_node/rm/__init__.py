"""Reward-model architectures of a node, behind one abstract base (base.RewardModel).

    light   light.LightRM   frozen MiniLM text embeddings + small image CNN + fusion MLP
    vlm     vlm_rm.VlmRM    factory VLM backbone (LoRA while training) + scalar head

``services.common.config.variants.REWARD_MODELS`` is the one name -> class table; ``build_rm`` makes a fresh, trainable model from the
node's model section. Loading a trained one goes through services.reward_node.checkpoint.
"""
from __future__ import annotations

from services.common.config.services import RewardModelSection
from services.common.config.variants import REWARD_MODELS, implementation
from services.reward_node.rm.base import Prepared, RewardModel
from services.reward_node.rm.light import LightRM
from services.reward_node.rm.vlm_rm import VlmRM


def rm_class(kind: str) -> type[RewardModel]:
    """The class registered for ``kind``; an unknown kind raises with the supported list."""
    return implementation(REWARD_MODELS, kind, "reward-model kind")


def build_rm(section: RewardModelSection) -> RewardModel:
    """A fresh, trainable RM of ``section.kind`` (random head; the VLM backbone from ``section.backbone``)."""
    return rm_class(section.kind).build(section)


__all__ = ["LightRM", "Prepared", "RewardModel", "VlmRM", "build_rm", "rm_class"]
