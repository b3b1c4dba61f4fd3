"""static: one learned weight per node, the same for every input (the not-input-conditioned baseline).

w = masked softmax of K free logits, trained with the same Bradley-Terry loss and router pairs
as the mor router, so the comparison isolates what input conditioning adds. Logits start at 0:
untrained, it is the uniform mean.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from services.orchestrator.fusion.trainer import LogitRouter

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo


class _GlobalLogits(torch.nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(k))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(features.shape[0], -1)


class StaticRouter(LogitRouter):
    """w_k = softmax(theta)_k over the available nodes, theta[K] learned."""

    kind = "static"

    def __init__(self, node_ids: Sequence[str], **train: float | int) -> None:
        super().__init__(node_ids, **train)  # type: ignore[arg-type]
        self.net = _GlobalLogits(self.k)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> LogitRouter:
        return cls(node_ids, **cls.train_args(cfg, seed))


__all__ = ["StaticRouter"]
