"""Config of the model factory (which VLM to build or load) and of the supervised warm start.

Kept free of torch/transformers imports and of ``services.common.config`` (which imports this
module), so that loading or printing a config stays cheap and import cycles cannot form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arch = Literal["qwen2_vl", "llava"]

# LoRA's default targets (see lora.py): the decoder's attention and MLP projections, which is
# `language_model` in Qwen2-VL, Qwen2.5-VL and LLaVA(-NeXT) and `text_model` in Idefics3.
LANGUAGE_MODEL_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
Preset = Literal["tiny", "small", "base"]


class _Frozen(BaseModel):
    """Frozen after loading; unknown keys are errors (same contract as services.common.config.Section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """Which VLM to use: a preset built from configs with random init, or a local HF checkpoint."""

    arch: Arch = Field("qwen2_vl", description="Architecture of a built model: qwen2_vl (M-RoPE, merged patches) or llava (CLIP tower + MLP projector).")
    preset: Preset = Field("tiny", description="Size of a built model: tiny (<1M params, tests), small (~15M, CPU SFT in minutes), base (~50M).")
    path: Path | None = Field(None, description="Local HF checkpoint dir (model + tokenizer + image processor). When set it wins over arch/preset.")
    seed: int = Field(0, description="Seed of the random init; the same seed gives bit-identical parameters.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Parameter dtype. auto: a checkpoint keeps the dtype it was saved in (bf16 for most "
        "Hub VLMs), a built model is float32; set float32 to train a bf16 checkpoint in full precision on CPU."
    )
    vocab_size: int = Field(1024, ge=300, le=65536, description="Target size of the byte-level BPE vocabulary of a built model (ignored with path).")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel of transformers' modelling code.")

    @property
    def is_checkpoint(self) -> bool:
        """True when the model is loaded from ``path`` instead of being built from a preset."""
        return self.path is not None


class SFTConfig(_Frozen):
    """Supervised warm start: next-token loss on the answer (+ end-of-turn) tokens only."""

    steps: int = Field(300, ge=1, description="Optimiser steps.")
    vision_warmup_steps: int = Field(
        400, ge=0, description="Stage-1 steps training the vision tower on answer classification before SFT "
        "(models built from a preset only; 0 skips it). See models/vision_warmup.py for why."
    )
    batch_size: int = Field(16, ge=1, description="Examples per step (CPU: keep it small-ish; each image adds its vision tokens).")
    finetune: Literal["auto", "lora", "full"] = Field(
        "auto", description="What trains. auto: every parameter of a model built from a preset (random init has "
        "nothing to keep), a LoRA adapter on a checkpoint (merged into its weights when saved); full on a "
        "pretrained 2B model needs ~35 GB of fp32 AdamW state, and its default lr is 100x smaller."
    )
    lr: float | None = Field(
        None, gt=0, description="Peak AdamW learning rate. None: 1e-3 for a model built from a preset, 2e-4 for "
        "LoRA, 1e-5 for full fine-tuning of a checkpoint (rates that keep pretrained weights intact)."
    )
    lora_rank: int = Field(16, ge=1, description="finetune lora: adapter rank.")
    lora_alpha: float = Field(32.0, gt=0, description="finetune lora: the adapter's update is scaled by lora_alpha / lora_rank.")
    lora_target_modules: str = Field(
        LANGUAGE_MODEL_TARGETS, description="finetune lora: regex of the modules that get an adapter (default: "
        "the language model's projections, never the vision tower; see services/common/models/lora.py)."
    )
    warmup: int = Field(20, ge=0, description="Linear warm-up steps from 0 to lr.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up, down to min_lr_ratio * lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of lr (cosine and linear).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay (not applied to biases, norms and embeddings).")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    eval_every: int = Field(0, ge=0, description="Call eval_fn every N steps (0: only once, after the last step).")
    log_every: int = Field(10, ge=1, description="Record the running loss every N steps.")
    seed: int = Field(0, description="Seed of example order.")
    answer_styles: Literal["all", "domain"] = Field(
        "all", description="How a world's SFT answers are written. all: the client styles in turn, so the start "
        "writes every style and the clients' rewards choose; domain: each benchmark in its convention (its home "
        "client's style, the one the server's router pairs reward), the rest in turn. Ignored for outside data."
    )
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU for the vision warm-up and SFT; None uses every core the process may run on. The trained weights depend on it: a fixed value gives the same policy on every machine.")

    def plan(self, pretrained: bool) -> tuple[Literal["lora", "full"], float]:
        """(what trains, peak lr) for a checkpoint (``pretrained``) or a model built from a preset."""
        mode = self.finetune if self.finetune != "auto" else ("lora" if pretrained else "full")
        default = 2e-4 if mode == "lora" else (1e-5 if pretrained else 1e-3)
        return mode, self.lr if self.lr is not None else default

    @model_validator(mode="after")
    def _warmup_fits(self) -> SFTConfig:
        if self.warmup >= self.steps and self.steps > 1:
            raise ValueError(f"warmup ({self.warmup}) must be shorter than steps ({self.steps})")
        return self
