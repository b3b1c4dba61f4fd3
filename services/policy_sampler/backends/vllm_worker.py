"""Runs inside each vLLM worker process (named by `worker_extension_cls`), never in the sampler.

vLLM mixes this class into its GPU worker, so `self.model_runner.model` is the served model; the
sampler calls `mor_load_full_weights` on every worker through `engine.collective_rpc` while no
request is in flight. Keep it free of imports from the rest of MoR: the worker loads it by name.
"""

from __future__ import annotations

from typing import Any


class FullWeightsExtension:
    """Loads a validated full-weights safetensors file into the worker's model."""

    model_runner: Any  # provided by the vLLM worker this class is mixed into

    def mor_load_full_weights(self, path: str) -> int:
        """Load every tensor of `path` through the model's own `load_weights` (which maps HF
        parameter names and shards them for tensor parallelism). Returns the tensor count."""
        from safetensors.torch import load_file

        tensors = load_file(path, device="cpu")
        self.model_runner.model.load_weights(weights=tensors.items())
        return len(tensors)


__all__ = ["FullWeightsExtension"]
