"""Build a VLM from a preset (random init, seeded) or load one from a local HF checkpoint dir."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from services.common.models import presets
from services.common.models.config import ModelConfig
from services.common.models.families import CheckpointError, check_supported, read_chat_template
from services.common.models.tokenizer import build_tokenizer
from services.common.models.vlm import VLM, quiet_hf

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_vlm(cfg: ModelConfig | None = None) -> VLM:
    """The VLM ``cfg`` describes: loaded from ``cfg.path`` if set, else built from arch/preset.

    A built model is deterministic: the same config (seed included) gives bit-identical parameters.
    The caller's torch RNG state is left untouched.
    """
    cfg = cfg or ModelConfig()
    if cfg.path is not None:
        dtype = None if cfg.dtype == "auto" else cfg.dtype
        return load_vlm(cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    tokenizer = build_tokenizer(cfg.arch, cfg.vocab_size)
    config = presets.model_config(cfg.arch, cfg.preset, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=cfg.attn_implementation)
    model.to(_DTYPES["float32" if cfg.dtype == "auto" else cfg.dtype])
    return VLM(model, tokenizer, presets.image_processor(cfg.arch, cfg.preset))


def load_vlm(
    path: str | Path,
    *,
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
) -> VLM:
    """Load any local HF image-text-to-text checkpoint (ours or a real one): model, tokenizer, PIL image processor.

    Never touches the network. ``dtype=None`` keeps the dtype the checkpoint was saved in. A family
    we do not serve is refused before any weight is read (`families.UnsupportedModel`).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint dir (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    check_supported(config, path)
    kwargs = {"dtype": _DTYPES[dtype]} if dtype else {"dtype": "auto"}
    with quiet_hf():
        model = AutoModelForImageTextToText.from_pretrained(
            path, config=config, local_files_only=True, attn_implementation=attn_implementation, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    if tokenizer.chat_template is None:
        tokenizer.chat_template = read_chat_template(path)
    if tokenizer.chat_template is None:
        raise CheckpointError(f"{path}: no chat template (looked in tokenizer_config.json, chat_template.jinja "
                         "and chat_template.json); add one of them")
    model.to(device)
    return VLM(model, tokenizer, image_processor)
