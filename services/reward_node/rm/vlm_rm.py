"""VLM RM: a vision-language backbone from the model factory with a scalar Bradley-Terry head.

The backbone reads the chat prompt (image tokens + question) followed by the response and its
end-of-turn token, in the factory's batch layout (prompt left-padded, completion right-padded).
The head sees the last layer's hidden state at the end-of-turn token and the mean over the
response tokens: score = w . [h_eot, mean(h_response)] + b.

Training adapts the backbone with LoRA (peft) on its attention and MLP projections and trains
the head fully; the base weights stay frozen. Before saving, the adapters are merged into the
base weights, so serving needs no peft and runs one plain forward. The checkpoint keeps the
merged backbone as a standard HF folder (``backbone/``: model, tokenizer, image processor) and
the head in ``model.safetensors``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image
from torch import nn

from services.common.models import ModelConfig
from services.reward_node.rm.base import RewardModel, check_lengths

if TYPE_CHECKING:
    from services.common.config.services import RewardModelSection

BACKBONE_DIR = "backbone"
HEAD_KEYS = ("head.weight", "head.bias", "out_shift", "out_scale")


@dataclass(frozen=True)
class VlmInputs:
    """Prepared samples: raw prompts, images and responses (tokenised per batch, which is cheap)."""

    prompts: list[str]
    images: list[Image.Image | None]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.responses)

    def select(self, index: Sequence[int]) -> VlmInputs:
        return VlmInputs([self.prompts[i] for i in index], [self.images[i] for i in index], [self.responses[i] for i in index])


def _hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    return int(getattr(text, "hidden_size", None) or config.hidden_size)


class VlmRM(RewardModel):
    """A factory VLM (optionally LoRA-wrapped) with a linear head; see the module docstring."""

    kind: ClassVar[str] = "vlm"

    def __init__(self, vlm: Any, backbone: dict[str, Any], lora: dict[str, Any] | None = None) -> None:
        """`vlm`: a services.common.models.VLM; `backbone`: how it was made (recorded in metadata);
        `lora`: {"rank", "alpha"} to wrap it with fresh LoRA adapters for training, None to serve."""
        super().__init__()
        from services.common.models.vlm import base_model

        self.vlm = vlm
        self.backbone_desc = dict(backbone)
        self.lora = dict(lora) if lora else None
        if lora is not None:
            from services.common.models.lora import LANGUAGE_MODEL_TARGETS, add_lora

            vlm.model = add_lora(vlm.model, rank=int(lora["rank"]), alpha=float(lora["alpha"]),
                                 target_modules=str(lora.get("target_modules", LANGUAGE_MODEL_TARGETS)))
        else:
            for p in vlm.model.parameters():
                p.requires_grad_(False)
        self.backbone = vlm.model
        base = base_model(vlm.model)
        # Qwen2-VL computes its own (M-RoPE) positions; other models take them from the mask.
        self._model_positions = hasattr(getattr(base, "model", None), "get_rope_index")
        hidden = _hidden_size(base.config)
        self.head = nn.Linear(2 * hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (2 * hidden) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def build(cls, section: RewardModelSection) -> VlmRM:
        return cls.fresh(section.backbone, section.lora_rank, section.lora_alpha)

    @classmethod
    def fresh(cls, backbone: ModelConfig, lora_rank: int, lora_alpha: float) -> VlmRM:
        """A trainable RM: the backbone ``backbone`` describes, LoRA-wrapped, with a new head."""
        from services.common.models import build_vlm

        desc = backbone.model_dump(mode="json")
        return cls(build_vlm(backbone), desc, {"rank": lora_rank, "alpha": lora_alpha})

    def prepare(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], responses: Sequence[str]
    ) -> VlmInputs:
        check_lengths(prompts, images, responses)
        return VlmInputs(list(prompts), list(images), list(responses))

    def raw_scores(self, prepared: VlmInputs) -> torch.Tensor:  # type: ignore[override]
        from services.common.models import ops

        proc = self.vlm.processor
        batch = proc.completion_batch(
            prepared.prompts, prepared.images, [proc.answer_ids(r) for r in prepared.responses]
        ).to(self.vlm.device, self.vlm.dtype)
        inputs = batch.full_inputs()
        if not self._model_positions:
            inputs["position_ids"] = ops.positions_from_mask(batch.attention_mask)
        out = self.backbone(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, batch.prompt_len :].float()  # [B, T, H], the completion columns
        mask = batch.completion_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
        lengths = batch.completion_mask.sum(1).clamp(min=1)  # [B]
        last = hidden[torch.arange(hidden.shape[0]), lengths - 1]  # end-of-turn token
        mean = (hidden * mask).sum(1) / lengths.unsqueeze(-1).to(hidden.dtype)
        return self.head(torch.cat([last, mean], dim=-1)).squeeze(-1)

    # ---- persistence ------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        cfg = self.vlm.model.config
        return {
            "kind": self.kind,
            "backbone": self.backbone_desc,
            "backbone_model_type": getattr(cfg, "model_type", "?"),
            "backbone_parameters": sum(p.numel() for p in self.backbone.parameters()),
            "lora": self.lora,
            "head": "linear([h_eot, mean(h_response)])",
        }

    def prepare_for_saving(self) -> None:
        """Merge the LoRA adapters into the base weights (serving runs a plain model)."""
        merge = getattr(self.vlm.model, "merge_and_unload", None)
        if callable(merge):
            merged = merge()
            self.vlm.model = merged
            self.backbone = merged
            for p in merged.parameters():
                p.requires_grad_(False)

    def save_extra(self, checkpoint_dir: Path) -> None:
        self.prepare_for_saving()
        self.vlm.save(checkpoint_dir / BACKBONE_DIR)

    def persistent_state(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        return {k: state[k].detach().contiguous() for k in HEAD_KEYS}

    def load_persistent_state(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [k for k in HEAD_KEYS if k not in tensors]
        extra = [k for k in tensors if k not in HEAD_KEYS]
        if missing or extra:
            raise ValueError(f"vlm RM state: missing {missing}, unexpected {extra}")
        self.load_state_dict(tensors, strict=False)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> VlmRM:
        from services.common.models import load_vlm

        if checkpoint_dir is None:
            lora = arch.get("lora") or {"rank": 8, "alpha": 16.0}
            return cls.fresh(ModelConfig(**arch["backbone"]), int(lora["rank"]), float(lora["alpha"]))
        rm = cls(load_vlm(checkpoint_dir / BACKBONE_DIR), arch["backbone"], None)
        rm.lora = arch.get("lora")  # how it was trained (the adapters are merged into backbone/)
        return rm


__all__ = ["BACKBONE_DIR", "VlmInputs", "VlmRM"]
