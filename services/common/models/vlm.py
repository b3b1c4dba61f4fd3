"""The VLM handle: a transformers image-text-to-text model with its tokenizer and processors.

``generate`` samples grouped answers with per-token log-probs; ``sequence_logprobs`` recomputes
those log-probs with one teacher-forced forward (the GRPO trainer needs both to agree). Both use
the same distribution: logits with every control token except end-of-turn removed (image,
vision, tool and tile tokens can never be produced), divided by the temperature. ``generate`` additionally
applies top-k / top-p truncation when asked, and its log-probs are those of the truncated
distribution actually sampled from.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging as hf_logging

from services.common.models import ops
from services.common.models.processor import VLMBatch, VLMProcessor


@dataclass(frozen=True)
class Generation:
    """One sampled answer. ``token_ids`` and ``logprobs`` include the final eos when finish_reason is "stop"."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded to ``seed``, restoring the caller's RNG state after."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def base_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a peft wrapper (or ``model`` itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' progress bars (weight loading/saving) for the duration of the block."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class _StopWhen(StoppingCriteria):
    """Ends every row of a generation once ``should_stop()`` is True (checked after each step)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool, device=input_ids.device)


class VLM:
    """A vision-language model with everything needed to prompt, sample, score and save it."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: BaseImageProcessor,
        *,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        base = base_model(model)
        params = inspect.signature(base.forward).parameters
        self.processor = VLMProcessor(
            tokenizer,
            image_processor,
            model.config,
            mm_token_type_ids="mm_token_type_ids" in params,
            system_prompt=system_prompt,
        )
        # Qwen2-VL style models compute their own 3-D (M-RoPE) positions from the attention mask.
        self._model_positions = hasattr(getattr(base, "model", None), "get_rope_index")
        self.eos_ids = self._eos_ids()
        self.suppress_ids = self._suppress_ids()
        # We own sampling: drop any checkpoint defaults (Qwen ships top_k=1, repetition_penalty=1.05).
        base.generation_config = GenerationConfig(
            bos_token_id=getattr(model.generation_config, "bos_token_id", None),
            eos_token_id=self.eos_ids,
            pad_token_id=self.processor.pad_id,
        )
        self._mask_cache: torch.Tensor | None = None

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Distinct parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)

    def _eos_ids(self) -> list[int]:
        ids = [int(self.tokenizer.eos_token_id)]
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for i in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
        return ids

    def _suppress_ids(self) -> list[int]:
        """Every control token except eos, plus lm-head rows the tokenizer never uses.

        Control tokens are the special ones and every other added token: checkpoints add their tool,
        fill-in-the-middle and tile markers (Qwen2.5's ``<tool_call>``, ``<|fim_prefix|>``, Idefics3's
        ``<row_1_col_1>``) as added tokens that are not flagged special, and none belongs in an answer.
        """
        special = set(self.tokenizer.all_special_ids)
        special |= set(self.tokenizer.added_tokens_decoder)
        special.add(self.processor.image_token_id)
        if self.processor.video_token_id is not None:
            special.add(int(self.processor.video_token_id))
        special -= set(self.eos_ids)
        unused = range(len(self.tokenizer), self.vocab_size)
        return sorted(i for i in special | set(unused) if 0 <= i < self.vocab_size)

    def suppress_mask(self) -> torch.Tensor:
        """Bool mask[V] of the suppressed ids, on the model's device."""
        if self._mask_cache is None or self._mask_cache.device != self.device:
            self._mask_cache = ops.suppress_mask(self.vocab_size, self.suppress_ids, self.device)
        return self._mask_cache

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        questions: Sequence[str],
        images: Sequence[Image.Image | None],
        num_return_sequences: int = 1,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
        seed: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Generation]]:
        """Sample ``num_return_sequences`` answers per (question, image), all in one batched generate call.

        Returns one list per question, in input order. With ``do_sample=False`` decoding is greedy
        and the sampling knobs are ignored. ``seed`` makes sampling reproducible without touching
        the caller's RNG state. ``should_stop`` is polled after every decoding step; once it returns
        True every row ends there (a server uses it to drop the work of a caller that went away).
        """
        if num_return_sequences < 1 or max_new_tokens < 1:
            raise ValueError("num_return_sequences and max_new_tokens must be >= 1")
        if do_sample and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use do_sample=False for greedy)")
        n = num_return_sequences
        qs = [q for q in questions for _ in range(n)]
        ims = [im for im in images for _ in range(n)]
        batch = self.processor.generation_batch(qs, ims).to(self.device, self.dtype)
        knobs = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=1,
            repetition_penalty=1.0,
            suppress_tokens=self.suppress_ids,
            eos_token_id=self.eos_ids,
            pad_token_id=self.processor.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=True,
            **knobs,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with seeded(seed, self.device):
                stopping = StoppingCriteriaList([_StopWhen(should_stop)] if should_stop is not None else [])
                out = self.model.generate(**batch.prompt_inputs(), generation_config=cfg, stopping_criteria=stopping)
        finally:
            self.model.train(was_training)
        new = out.sequences[:, batch.prompt_len :]
        # out.scores[t] are the step-t logits as processed for sampling (suppression, temperature, top-k/p).
        steps = [s.float().log_softmax(-1).gather(-1, new[:, t : t + 1]) for t, s in enumerate(out.scores)]
        logp = torch.cat(steps, dim=1).cpu() if steps else torch.zeros(new.shape)
        new = new.cpu()
        eos = set(self.eos_ids)
        flat: list[Generation] = []
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            stop = next((i for i, t in enumerate(ids) if t in eos), None)
            keep = ids if stop is None else ids[: stop + 1]
            text_ids = keep if stop is None else keep[:-1]
            flat.append(
                Generation(
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    token_ids=keep,
                    logprobs=[float(x) for x in logp[row, : len(keep)]],
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return [flat[i * n : (i + 1) * n] for i in range(len(questions))]

    # ---- scoring -------------------------------------------------------------------------------
    def completion_logprobs(self, batch: VLMBatch, temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probs[B, T] of ``batch.completion_ids`` (0 where completion_mask is 0).

        One teacher-forced forward; keeps the autograd graph when grad is enabled (GRPO, SFT).
        """
        batch = batch.to(self.device, self.dtype)
        t = batch.completion_ids.shape[1]
        if t == 0:
            return torch.zeros(batch.completion_ids.shape, device=self.device)
        inputs = batch.full_inputs()
        if not self._model_positions:
            inputs["position_ids"] = ops.positions_from_mask(batch.attention_mask)
        out = self.model(**inputs, use_cache=False, logits_to_keep=t + 1)
        logits = out.logits[:, :-1]  # column prompt_len + j - 1 predicts completion token j
        logp = ops.token_logprobs(logits, batch.completion_ids, self.suppress_mask(), temperature)
        return logp.masked_fill(batch.completion_mask == 0, 0.0)

    def sequence_logprobs(
        self,
        questions: Sequence[str],
        images: Sequence[Image.Image | None],
        completions_token_ids: Sequence[Sequence[int]],
        temperature: float = 1.0,
        batch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """Log-prob of every token of every completion (one tensor[len(completion)] each), recomputed.

        Matches ``generate``'s log-probs at the same temperature (without top-k/top-p). Keeps
        gradients when called with grad enabled; wrap in ``torch.no_grad()`` for reference scores.
        """
        total = len(completions_token_ids)
        step = batch_size or max(total, 1)
        result: list[torch.Tensor] = []
        for s in range(0, total, step):
            batch = self.processor.completion_batch(
                questions[s : s + step], images[s : s + step], completions_token_ids[s : s + step]
            )
            logp = self.completion_logprobs(batch, temperature)
            lengths = batch.completion_mask.sum(-1).tolist()
            result.extend(logp[i, :n] for i, n in enumerate(lengths))
        return result

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write model (safetensors), tokenizer and image processor as a standard HF checkpoint dir."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            self.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            self.image_processor.save_pretrained(out)
        return out

    def adapter_disabled(self) -> contextlib.AbstractContextManager:
        """Context in which a peft-wrapped model runs without its adapter (the GRPO reference policy).

        A plain model has no adapter: the context then changes nothing.
        """
        disable = getattr(self.model, "disable_adapter", None)
        return disable() if callable(disable) else contextlib.nullcontext()

    def train(self, mode: bool = True) -> VLM:
        self.model.train(mode)
        return self

    def eval(self) -> VLM:
        return self.train(False)

    def to(self, device: torch.device | str) -> VLM:
        self.model.to(device)
        return self
