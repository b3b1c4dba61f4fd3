"""Our thin VLM processor: chat prompt, image-token expansion, left-padded generation batches, loss batches.

transformers' own processors pull in video processors (and with them torchvision), so this one
uses only the tokenizer and a PIL-backend image processor; how the one image placeholder of a
prompt becomes image tokens and model inputs is the family's (see families.py).

Batch layout, shared by generation, SFT and log-prob recomputation: the prompt is left-padded to
``prompt_len`` columns and the completion (if any) right-padded after it, so completion token j of
every row sits in column ``prompt_len + j`` and its logits in column ``prompt_len + j - 1``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import PreTrainedConfig, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from services.common.models import ops
from services.common.models.families import image_layout


@dataclass
class Encoded:
    """One example, tokenised: prompt ids with image tokens expanded, its image tensors, optional completion."""

    prompt_ids: list[int]
    vision: dict[str, torch.Tensor]  # the image's model inputs (pixel_values, image_grid_thw, ...); {} without one
    completion_ids: list[int] | None = None

    @property
    def pixel_values(self) -> torch.Tensor | None:
        return self.vision.get("pixel_values")

    @property
    def image_grid_thw(self) -> torch.Tensor | None:
        return self.vision.get("image_grid_thw")


@dataclass
class VLMBatch:
    """Model inputs for B rows: left-padded prompt, then right-padded completion (may be 0 columns)."""

    input_ids: torch.Tensor  # [B, prompt_len + T]
    attention_mask: torch.Tensor  # [B, prompt_len + T]
    prompt_len: int
    completion_ids: torch.Tensor  # [B, T] (pad where completion_mask is 0)
    completion_mask: torch.Tensor  # [B, T]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLMBatch:
        """Move tensors to ``device``; pixel values also take the model's float ``dtype``."""
        pv = self.pixel_values
        if pv is not None:
            pv = pv.to(device=device, dtype=dtype) if dtype is not None else pv.to(device)
        return VLMBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            prompt_len=self.prompt_len,
            completion_ids=self.completion_ids.to(device),
            completion_mask=self.completion_mask.to(device),
            pixel_values=pv,
            image_grid_thw=None if self.image_grid_thw is None else self.image_grid_thw.to(device),
            mm_token_type_ids=None if self.mm_token_type_ids is None else self.mm_token_type_ids.to(device),
            extra={k: v.to(device) for k, v in self.extra.items()},
        )

    def prompt_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword inputs of the prompt part only (for ``generate``)."""
        out = {
            "input_ids": self.input_ids[:, : self.prompt_len],
            "attention_mask": self.attention_mask[:, : self.prompt_len],
        }
        if self.mm_token_type_ids is not None:
            out["mm_token_type_ids"] = self.mm_token_type_ids[:, : self.prompt_len]
        return out | self._vision_inputs()

    def full_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword inputs of prompt + completion (for a teacher-forced forward)."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.mm_token_type_ids is not None:
            out["mm_token_type_ids"] = self.mm_token_type_ids
        return out | self._vision_inputs()

    def _vision_inputs(self) -> dict[str, torch.Tensor]:
        out = dict(self.extra)
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        if self.image_grid_thw is not None:
            out["image_grid_thw"] = self.image_grid_thw
        return out


class VLMProcessor:
    """Prompt building and batching for one model (its tokenizer, image processor and config)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: BaseImageProcessor,
        config: PreTrainedConfig,
        *,
        mm_token_type_ids: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.mm_token_type_ids = mm_token_type_ids
        self.system_prompt = system_prompt
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(config, "image_token_index", None)
        if image_token_id is None:
            raise ValueError(f"config of model_type {config.model_type!r} names no image_token_id")
        self.image_token_id = int(image_token_id)
        self.video_token_id = getattr(config, "video_token_id", None)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        self.pad_id = int(tokenizer.pad_token_id)
        self.layout = image_layout(tokenizer, image_processor, config, self.image_token_id)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an eos token (end of the assistant turn)")
        self.eos_id = int(tokenizer.eos_token_id)

    # ---- prompts -------------------------------------------------------------------------------
    def messages(self, question: str, with_image: bool = True) -> list[dict]:
        """Chat messages of one question: optional system turn, then a user turn with the image first."""
        content: list[dict] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": question})
        msgs: list[dict] = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": content}]

    def prompt_text(self, question: str, with_image: bool = True) -> str:
        """The rendered chat prompt, ending with the assistant header (one image placeholder, unexpanded)."""
        return self.tokenizer.apply_chat_template(
            self.messages(question, with_image), tokenize=False, add_generation_prompt=True
        )

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer followed by the end-of-turn (eos) token."""
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.eos_id]

    # ---- images --------------------------------------------------------------------------------
    def image_tensors(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(pixel_values, image_grid_thw or None, number of LM tokens) of one image (Qwen2-VL and LLaVA-1.5)."""
        vision, n = self.layout.image_tokens(image.convert("RGB"))
        return vision["pixel_values"], vision.get("image_grid_thw"), n

    # ---- encoding and batching ---------------------------------------------------------------
    def encode(
        self, question: str, image: Image.Image | None, completion_ids: Sequence[int] | None = None
    ) -> Encoded:
        """Tokenise one example; the single image placeholder becomes as many image tokens as the image needs."""
        ids, vision = self.layout.encode(self.prompt_text(question, image is not None), image)
        comp = None if completion_ids is None else [int(t) for t in completion_ids]
        return Encoded(prompt_ids=ids, vision=vision, completion_ids=comp)

    def collate(self, examples: Sequence[Encoded]) -> VLMBatch:
        """Stack encoded examples: prompt left-padded, completion right-padded after it."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        p_ids, p_mask = ops.left_pad([e.prompt_ids for e in examples], self.pad_id)
        c_ids, c_mask = ops.right_pad([e.completion_ids or [] for e in examples], self.pad_id)
        input_ids = torch.cat([p_ids, c_ids], dim=1)
        attention_mask = torch.cat([p_mask, c_mask], dim=1)
        vision = self.layout.collate([e.vision for e in examples if e.vision])
        mm = None
        if self.mm_token_type_ids:
            mm = (input_ids == self.image_token_id).long() * attention_mask
            if self.video_token_id is not None:
                mm = mm + 2 * (input_ids == self.video_token_id).long() * attention_mask
        return VLMBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            prompt_len=p_ids.shape[1],
            completion_ids=c_ids,
            completion_mask=c_mask,
            pixel_values=vision.pop("pixel_values", None),
            image_grid_thw=vision.pop("image_grid_thw", None),
            mm_token_type_ids=mm,
            extra=vision,
        )

    def generation_batch(self, questions: Sequence[str], images: Sequence[Image.Image | None]) -> VLMBatch:
        """Left-padded prompts, no completion: the input of ``generate``."""
        _check_lengths(questions, images)
        return self.collate([self.encode(q, im) for q, im in zip(questions, images, strict=True)])

    def completion_batch(
        self,
        questions: Sequence[str],
        images: Sequence[Image.Image | None],
        completions: Sequence[Sequence[int]],
    ) -> VLMBatch:
        """Prompts with given completion token ids appended (log-prob recomputation, GRPO)."""
        _check_lengths(questions, images, completions)
        encs = [self.encode(q, im, c) for q, im, c in zip(questions, images, completions, strict=True)]
        return self.collate(encs)

    def sft_batch(
        self, questions: Sequence[str], images: Sequence[Image.Image | None], answers: Sequence[str]
    ) -> VLMBatch:
        """Prompts with answer + eos as the completion; the loss covers completion_mask only."""
        return self.completion_batch(questions, images, [self.answer_ids(a) for a in answers])


def _check_lengths(*seqs: Sequence) -> None:
    sizes = {len(s) for s in seqs}
    if len(sizes) != 1:
        raise ValueError(f"questions, images (and completions) must have the same length, got {[len(s) for s in seqs]}")
