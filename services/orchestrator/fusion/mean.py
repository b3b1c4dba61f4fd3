"""Uniform mean: every available node weighs the same (the baseline that needs nothing)."""
from __future__ import annotations

import torch

from services.orchestrator.fusion.base import Router


class MeanRouter(Router):
    """w = 1 / (#available) on every available node, for every prompt."""

    kind = "mean"

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return self._uniform(features, available)


__all__ = ["MeanRouter"]
