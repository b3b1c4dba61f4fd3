"""The weight-update payload both sides share: what a push carries and how a model becomes one.

A push is a header (version, kind, size, sha256, adapter config) and a safetensors payload: a PEFT
LoRA adapter (keys as `peft_model.save_pretrained` writes them) or every parameter (keys as
`model.named_parameters()` names them). The trainer and the sampler's client encode here; the
sampler verifies and applies in services/policy_sampler/weights.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

WeightsKind = Literal["lora", "full"]
FORMAT = "safetensors"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class WeightsHeader:
    """The first message of an update (see WeightsHeader in policy_sampler.proto)."""

    version: int
    kind: WeightsKind | None  # None: the sender left it unspecified
    total_bytes: int
    sha256: str
    format: str = FORMAT
    adapter_config_json: str = ""


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def encode_lora_adapter(peft_model: Any, adapter_name: str = "default",
                        state_dict: dict[str, torch.Tensor] | None = None) -> tuple[bytes, str]:
    """(safetensors payload, adapter_config.json text) of a peft model's adapter, as the sampler takes it.

    ``state_dict``: the model's full state when its own tensors are shards (FSDP gathers it first).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    state = get_peft_model_state_dict(peft_model, state_dict=state_dict, adapter_name=adapter_name)
    payload = save({k: v.detach().contiguous().cpu() for k, v in state.items()})
    config = peft_model.peft_config[adapter_name]
    return payload, config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(
        config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v))


def encode_full_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> bytes:
    """safetensors payload of every parameter of `model` (tied tensors once), as the sampler takes it.

    ``state_dict``: the model's full state when its own tensors are shards (FSDP gathers it first).
    """
    from safetensors.torch import save

    if state_dict is not None:
        return save({name: state_dict[name].detach().contiguous().cpu() for name, _ in model.named_parameters()})
    return save({name: p.detach().contiguous().cpu() for name, p in model.named_parameters()})


def read_adapter_dir(path: str | Path) -> tuple[bytes, str]:
    """(payload, adapter_config.json text) of an adapter folder written by `save_pretrained`."""
    folder = Path(path)
    weights, config = folder / ADAPTER_WEIGHTS_FILE, folder / ADAPTER_CONFIG_FILE
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: {f.name} is missing")
    return weights.read_bytes(), config.read_text()



__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "FORMAT", "WeightsHeader", "WeightsKind", "encode_full_weights",
           "encode_lora_adapter", "read_adapter_dir", "sha256_hex"]
