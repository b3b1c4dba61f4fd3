"""Pessimistic (min) and optimistic (max) fusion: each response takes one node's z-score.

Min is the conservative baseline against reward hacking (an answer is only as good as its
harshest judge); max is its mirror. Neither has weights in the usual sense, so:
  weights()  uniform over the available nodes (what "no preference between nodes" means), and
  fuse()     reports, per prompt, the share of its scored responses where each node was the one
             selected, so the per-node weight metric stays comparable with the other routers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from services.orchestrator.fusion import ops
from services.orchestrator.fusion.base import Router


class _ExtremeRouter(Router):
    largest: bool = False

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return self._uniform(features, available)

    def fuse(
        self, z: torch.Tensor, mask: torch.Tensor, prompt_index: torch.Tensor, features: torch.Tensor,
        domains: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z, mask, prompt_index, features)
        value, index = ops.masked_extreme(z, mask, largest=self.largest)
        share = ops.per_prompt_mean(ops.one_hot_rows(index, self.k), prompt_index, features.shape[0])
        return value, share


class MinRouter(_ExtremeRouter):
    """r = min over the nodes that scored the response."""

    kind = "min"
    largest = False


class MaxRouter(_ExtremeRouter):
    """r = max over the nodes that scored the response."""

    kind = "max"
    largest = True


__all__ = ["MaxRouter", "MinRouter"]
