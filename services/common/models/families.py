"""The VLM families we serve, and how each one turns an image into prompt tokens and model inputs.

A chat template renders one image placeholder per image; the family decides what that placeholder
becomes (how many image tokens, and around them any tile or row markers) and which tensors the
model's forward takes for the image. Token ids must equal what the model's own Hugging Face
processor produces, token for token, or image features and image tokens stop lining up:

- Qwen2-VL / Qwen2.5-VL: ``<|image_pad|>`` repeated once per merged patch group (from
  ``image_grid_thw``), pixel rows ``[patches, patch_dim]`` concatenated over the batch. Our own code:
  transformers' Qwen processors need a video processor, and video processors need torchvision.
- LLaVA-1.5: ``<image>`` once per vision-tower patch (plus CLS with the "full" strategy). Our own code.
- LLaVA-NeXT and Idefics3 / SmolVLM: any-resolution tiling with per-tile tokens and row markers.
  transformers' processors for these need neither torchvision nor video, so we call them for the
  prompt ids and tensors instead of re-deriving their tiling (a copy would drift from upstream).

Tensors are per example with a leading dim of 1; `collate` concatenates them, zero-padding the tile
dim where images have different tile counts (both models drop all-zero tiles).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedConfig, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

# model_type -> the name users know it by. Idefics3 covers SmolVLM (v1 checkpoints say "idefics3").
SUPPORTED: dict[str, str] = {
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "llava": "LLaVA-1.5",
    "llava_next": "LLaVA-NeXT",
    "idefics3": "Idefics3 / SmolVLM",
}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be served as it is (the message says what to change)."""


class UnsupportedModel(CheckpointError):
    """A checkpoint of a family we do not serve."""


def check_supported(config: PreTrainedConfig, where: str | Path = "the checkpoint") -> str:
    """The config's model_type, or one line naming the families that are supported."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in SUPPORTED:
        names = ", ".join(f"{v} ({k})" for k, v in SUPPORTED.items())
        raise UnsupportedModel(f"{where}: model_type {model_type!r} is not a supported VLM family; supported: {names}")
    return model_type


def read_chat_template(path: str | Path) -> str | None:
    """The chat template a checkpoint keeps beside its tokenizer (where processors keep it), if any.

    Hub checkpoints keep it in the tokenizer config (read by the tokenizer itself), in
    ``chat_template.jinja`` or, in older processor layouts, in ``chat_template.json``.
    """
    path = Path(path)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = path / "chat_template.json"
    if legacy.is_file():
        try:
            value = json.loads(legacy.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{legacy}: not a JSON object with a 'chat_template' string ({err})") from None
        if not isinstance(value, str):
            raise ValueError(f"{legacy}: 'chat_template' must be a string")
        return value
    return None


class ImageLayout:
    """How one family encodes a prompt with one image; subclasses fill in `image_tokens`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: BaseImageProcessor,
                 config: PreTrainedConfig, image_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.placeholder = tokenizer.convert_ids_to_tokens(image_token_id)

    def encode(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Prompt ids (the placeholder expanded) and the image's model inputs, as the HF processor makes them."""
        if image is None:
            return self._ids(prompt), {}
        _check_one_placeholder(prompt, self.placeholder)
        tensors, n = self.image_tokens(image.convert("RGB"))
        return self._ids(prompt.replace(self.placeholder, self.placeholder * n)), tensors

    def image_tokens(self, image: Image.Image) -> tuple[dict[str, torch.Tensor], int]:
        raise NotImplementedError

    def _ids(self, text: str) -> list[int]:
        # HF processors tokenise with the tokenizer's defaults, so BOS is added where the tokenizer adds it.
        return self.tokenizer(text)["input_ids"]

    def collate(self, tensors: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = {k for t in tensors for k in t}
        return {k: _cat_padded([t[k] for t in tensors if k in t]) for k in sorted(keys)}


class MergedPatches(ImageLayout):
    """Qwen2-VL / Qwen2.5-VL: one token per ``merge x merge`` group of patches."""

    def image_tokens(self, image: Image.Image) -> tuple[dict[str, torch.Tensor], int]:
        out = self.image_processor(images=[image], return_tensors="pt")
        grid = out["image_grid_thw"]
        merge = int(getattr(self.image_processor, "merge_size", None) or self.config.vision_config.spatial_merge_size)
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, int(grid.prod().item()) // (merge * merge)


class PatchTokens(ImageLayout):
    """LLaVA-1.5: one token per vision-tower patch (CLS too with the "full" feature strategy)."""

    def image_tokens(self, image: Image.Image) -> tuple[dict[str, torch.Tensor], int]:
        pv = self.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        patch = int(self.config.vision_config.patch_size)
        n = (pv.shape[-2] // patch) * (pv.shape[-1] // patch)
        if getattr(self.config, "vision_feature_select_strategy", "default") == "full":
            n += 1
        return {"pixel_values": pv}, n


class HFProcessorLayout(ImageLayout):
    """LLaVA-NeXT and Idefics3: transformers' own processor, configured from the model config."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: BaseImageProcessor,
                 config: PreTrainedConfig, image_token_id: int) -> None:
        super().__init__(tokenizer, image_processor, config, image_token_id)
        vision = config.vision_config
        if config.model_type == "llava_next":
            from transformers import LlavaNextProcessor

            self.hf = LlavaNextProcessor(
                image_processor=image_processor, tokenizer=tokenizer, patch_size=int(vision.patch_size),
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                # A CLIP tower emits a CLS feature beside its patches; SigLIP does not.
                num_additional_image_tokens=1 if vision.model_type == "clip_vision_model" else 0,
                image_token=self.placeholder,
            )
        else:
            from transformers import Idefics3Processor

            side = int(vision.image_size) // int(vision.patch_size)
            self.hf = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                        image_seq_len=int(side * side / (config.scale_factor**2)))

    def encode(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, torch.Tensor]]:
        if image is None:
            return self._ids(prompt), {}
        _check_one_placeholder(prompt, self.placeholder)
        images: Any = [[image.convert("RGB")]] if self.config.model_type == "idefics3" else [image.convert("RGB")]
        out = self.hf(text=[prompt], images=images, return_tensors="pt")
        tensors = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        return out["input_ids"][0].tolist(), tensors


_LAYOUTS: dict[str, type[ImageLayout]] = {
    "qwen2_vl": MergedPatches,
    "qwen2_5_vl": MergedPatches,
    "llava": PatchTokens,
    "llava_next": HFProcessorLayout,
    "idefics3": HFProcessorLayout,
}


def image_layout(tokenizer: PreTrainedTokenizerBase, image_processor: BaseImageProcessor,
                 config: PreTrainedConfig, image_token_id: int) -> ImageLayout:
    """The layout of ``config``'s family (refused with the supported list for any other)."""
    return _LAYOUTS[check_supported(config)](tokenizer, image_processor, config, image_token_id)


def _check_one_placeholder(prompt: str, placeholder: str) -> None:
    found = prompt.count(placeholder)
    if found != 1:
        raise ValueError(f"chat template produced {found} image placeholders ({placeholder!r}), expected 1")


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding dim 1 (tiles per image) to the longest where it differs."""
    if len({p.shape[1:] for p in parts}) > 1 and len({p.shape[2:] for p in parts}) == 1:
        width = max(p.shape[1] for p in parts)
        padded = []
        for p in parts:
            out = p.new_zeros((p.shape[0], width, *p.shape[2:]))
            out[:, : p.shape[1]] = p
            padded.append(out)
        parts = padded
    return torch.cat(parts, dim=0)


__all__ = ["SUPPORTED", "CheckpointError", "ImageLayout", "UnsupportedModel", "check_supported", "image_layout", "read_chat_template"]
