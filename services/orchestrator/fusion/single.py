"""single:<node_id>: one organisation's RM alone (the per-client baseline).

While that node is unavailable the weights are all zero, so every fused reward is NaN and GRPO
gives those groups zero advantage. Falling back to the other nodes would make the baseline
something else than "one node's preferences" without anyone noticing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from services.orchestrator.fusion.base import Router

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo


class SingleRouter(Router):
    """w = one-hot on ``node``."""

    kind = "single"

    def __init__(self, node_ids: Sequence[str], node: str) -> None:
        super().__init__(node_ids)
        if node not in self.node_ids:
            raise ValueError(f"single:{node}: no such node (have {', '.join(self.node_ids)})")
        self.node = node
        self.index = self.node_ids.index(node)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> Router:
        return cls(node_ids, arg)

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(features.shape[0], self.k)
        if bool(available[self.index]):
            w[:, self.index] = 1.0
        return w

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "node": self.node}


__all__ = ["SingleRouter"]
