"""The reward-model contract every RM architecture of a node follows.

A reward model maps (prompt, image, response) triples to one scalar each. Training and serving
share one path: ``prepare`` turns raw inputs into model inputs (frozen encoders run here, once),
``forward`` scores prepared inputs with the trainable parts (keeps the autograd graph), and
``score_batch`` is the no-grad serving call. Scores are standardised by a fixed affine map stored
with the weights (``out_shift``/``out_scale`` buffers, set once after training), so a node's raw
scores are roughly N(0, 1) on its own training answers whatever the architecture.

A new architecture is a new file with a subclass, listed in ``services.common.config.variants.REWARD_MODELS``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from services.common.config.services import RewardModelSection


class Prepared(Protocol):
    """Model inputs for N samples that a training loop can index into without re-encoding."""

    def __len__(self) -> int: ...

    def select(self, index: Sequence[int]) -> Prepared:
        """The prepared inputs of the samples at ``index``, in that order."""
        ...


class RewardModel(nn.Module, ABC):
    """Scores answers: ``score_batch(prompts[N], images[N], responses[N]) -> scores[N]`` (float32, CPU)."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        # Output standardisation: score = (raw - shift) / scale. Identity until `standardise` is called.
        self.register_buffer("out_shift", torch.zeros(()))
        self.register_buffer("out_scale", torch.ones(()))

    @classmethod
    def build(cls, section: RewardModelSection) -> RewardModel:
        """A fresh, trainable RM from the node's model section: the one factory signature of every kind
        (config.variants.REWARD_MODELS). An architecture without settings takes none of them."""
        return cls()

    # ---- the contract -----------------------------------------------------------------------
    @abstractmethod
    def prepare(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], responses: Sequence[str]
    ) -> Prepared:
        """Encode N samples (the three sequences have the same length). No gradients flow through here."""

    @abstractmethod
    def raw_scores(self, prepared: Prepared) -> torch.Tensor:
        """Unstandardised scores[N] of prepared samples; keeps the autograd graph when grad is enabled."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """JSON-able description from which ``from_architecture`` rebuilds the same module (without weights)."""

    @classmethod
    @abstractmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> RewardModel:
        """A module of this architecture; ``checkpoint_dir`` holds any files the architecture keeps
        beside its safetensors (e.g. a VLM backbone), None for a fresh model."""

    def save_extra(self, checkpoint_dir: Path) -> None:
        """Write files beyond the trainable state (a backbone); nothing by default."""

    def persistent_state(self) -> dict[str, torch.Tensor]:
        """Tensors saved to model.safetensors (defaults to the whole state dict)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_persistent_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of ``persistent_state``: every saved tensor must fit, none may be missing."""
        self.load_state_dict(tensors, strict=True)

    def prepare_for_saving(self) -> None:
        """Turn training-only structure into its serving form before saving (e.g. merge LoRA)."""

    # ---- shared behaviour -------------------------------------------------------------------
    def forward(self, prepared: Prepared) -> torch.Tensor:
        """Standardised scores[N] with the autograd graph (training)."""
        return (self.raw_scores(prepared) - self.out_shift) / self.out_scale

    @torch.no_grad()
    def score_batch(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], responses: Sequence[str]
    ) -> torch.Tensor:
        """Serving call: standardised scores[N] (float32, CPU), in input order, no gradients."""
        check_lengths(prompts, images, responses)
        if not responses:
            return torch.zeros(0)
        was_training = self.training
        self.eval()
        try:
            return self.forward(self.prepare(prompts, images, responses)).float().cpu()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def standardise(self, raw: torch.Tensor) -> None:
        """Fix the output map so these raw scores get mean 0 and std 1 (std floored at 1e-6)."""
        self.out_shift.fill_(float(raw.mean()))
        self.out_scale.fill_(max(float(raw.std(unbiased=False)), 1e-6))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def check_lengths(prompts: Sequence[Any], images: Sequence[Any], responses: Sequence[Any]) -> None:
    if not (len(prompts) == len(images) == len(responses)):
        raise ValueError(
            f"prompts, images and responses must have the same length, got {len(prompts)}, {len(images)}, {len(responses)}"
        )


__all__ = ["Prepared", "RewardModel", "check_lengths"]
