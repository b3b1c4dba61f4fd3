"""Model factory for small offline VLMs (Qwen2-VL, LLaVA) and their supervised warm start.

Public entry points (the heavy ones import torch/transformers lazily, on first use, so that
importing configs stays cheap):
  ModelConfig, SFTConfig                       config.py
  build_vlm(cfg) -> VLM, load_vlm(path) -> VLM  factory.py
  VLM, Generation                              vlm.py      (generate, sequence_logprobs, save)
  VLMProcessor, VLMBatch                       processor.py
  build_tokenizer                              tokenizer.py
  SFTExample, SFTResult, sft_train, greedy_accuracy  sft.py
"""
from __future__ import annotations

import importlib
from typing import Any

from services.common.models.config import ModelConfig, SFTConfig

_LAZY = {
    "build_vlm": "factory",
    "load_vlm": "factory",
    "VLM": "vlm",
    "Generation": "vlm",
    "VLMProcessor": "processor",
    "VLMBatch": "processor",
    "build_tokenizer": "tokenizer",
    "SFTExample": "sft",
    "SFTResult": "sft",
    "sft_train": "sft",
    "greedy_accuracy": "sft",
}

__all__ = ["ModelConfig", "SFTConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"services.common.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'services.common.models' has no attribute {name!r}")
