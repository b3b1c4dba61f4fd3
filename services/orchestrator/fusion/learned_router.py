"""mor (default): an input-conditioned gating network, w(x) = softmax over available nodes of g(x).

g is a one-hidden-layer MLP on the frozen (prompt, image) embedding of embedding.py. Two choices,
both for the few hundred router pairs this is trained on:
  * inputs are standardised with the per-dimension mean/std of the training features (set by
    ``fit``, saved with the weights): sentence embeddings share a large common component, and
    the gate should see what differs between prompts, not that;
  * the output layer starts at zero, so an untrained router (train_steps 0, or before ``fit``)
    is exactly the uniform mean rather than a random preference between organisations.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from services.orchestrator.fusion.base import ScoredRouterPairs
from services.orchestrator.fusion.trainer import LogitRouter

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo

STD_FLOOR = 1e-4  # a feature constant on the router pairs must not be blown up by 1 / std


class GatingMLP(torch.nn.Module):
    """features[P, D] -> logits[P, K]: standardise, Linear(D, H), GELU, Linear(H, K)."""

    def __init__(self, dim: int, hidden: int, k: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.hidden = torch.nn.Linear(dim, hidden)
        self.out = torch.nn.Linear(hidden, k)
        with torch.no_grad():  # seeded init, independent of the global RNG state
            bound = 1.0 / dim**0.5
            self.hidden.weight.uniform_(-bound, bound, generator=gen)
            self.hidden.bias.uniform_(-bound, bound, generator=gen)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.mu) / self.sigma
        return self.out(torch.nn.functional.gelu(self.hidden(x)))


class MoRRouter(LogitRouter):
    """w(x) = masked softmax of GatingMLP(embedding(x)), trained with Bradley-Terry on router pairs."""

    kind = "mor"

    def __init__(self, node_ids: Sequence[str], *, feature_dim: int, hidden: int, **train: float | int) -> None:
        super().__init__(node_ids, **train)  # type: ignore[arg-type]
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.feature_dim = feature_dim
        self.net = GatingMLP(feature_dim, hidden, self.k, self.seed)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> LogitRouter:
        return cls(node_ids, feature_dim=feature_dim, hidden=cfg.hidden, **cls.train_args(cfg, seed))

    def fit(self, data: ScoredRouterPairs) -> dict[str, float]:
        if data.features.shape[1] != self.feature_dim:
            raise ValueError(f"router-pair features have {data.features.shape[1]} dims, the router {self.feature_dim}")
        feats = data.features.float()
        with torch.no_grad():
            self.net.mu.copy_(feats.mean(0))
            self.net.sigma.copy_(feats.std(0, unbiased=False).clamp_min(STD_FLOOR) if len(feats) > 1
                                 else torch.ones(self.feature_dim))
        return super().fit(data)


__all__ = ["GatingMLP", "MoRRouter"]
