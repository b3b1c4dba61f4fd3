"""The Router contract: per-prompt node weights, and fusion of calibrated node scores with them.

    w = router.weights(features[P, D], available[K])          # [P, K], rows sum to 1 over available
    r, w_eff = router.fuse(z[K, N], mask[K, N], prompt_index[N], features[P, D])
    metrics_dict = router.fit(scored_router_pairs)            # no-op unless the router learns

``z`` are calibrated node scores (z-scores, see calibration.py), ``mask[k, n]`` says node k scored
response n. ``fuse`` renormalises each response's weights over the nodes that scored it (a
missing node is masked, never zero-filled), and a response no node scored gets NaN. ``w_eff`` is
the weight each node *effectively* had per prompt (averaged over the prompt's scored responses),
which is what the orchestrator reports as the per-node weight metric.

A variant is a new file beside this one (mean.py, extremes.py, single.py, static.py,
learned_router.py, prototype.py), registered in the one table of fusion/__init__.py. Shared maths
lives in fusion/ops.py. Routers with parameters derive from ``LogitRouter`` (fusion/trainer.py): a
torch module maps features to one logit per node, the weights are a masked softmax of them, and
``fit`` trains the module with the Bradley-Terry trainer beside it. ``ScoredRouterPairs``, what ``fit``
takes, is defined here with the contract.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from services.orchestrator.fusion import ops

if TYPE_CHECKING:  # typing only: fusion never imports the gRPC side at run time
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo


@dataclass(frozen=True)
class ScoredRouterPairs:
    """The router pairs as a router trains on them: features[P, D], z_chosen / z_rejected[K, P] (NaN where masked),
    mask[K, P] bool (node k scored both answers of pair p). Node order = the router's."""

    features: torch.Tensor
    z_chosen: torch.Tensor
    z_rejected: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        p = self.features.shape[0]
        shape = self.z_chosen.shape
        if self.features.dim() != 2 or len(shape) != 2 or shape[1] != p:
            raise ValueError(f"features must be [P, D] and z_chosen [K, P]; got {tuple(self.features.shape)}, {tuple(shape)}")
        if self.z_rejected.shape != shape or self.mask.shape != shape or self.mask.dtype != torch.bool:
            raise ValueError("z_chosen, z_rejected and mask (bool) must have the same [K, P] shape")

    @property
    def n_pairs(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: torch.Tensor) -> ScoredRouterPairs:
        return ScoredRouterPairs(self.features[index], self.z_chosen[:, index], self.z_rejected[:, index], self.mask[:, index])


class Router(ABC):
    """Fuses K nodes' calibrated scores; see the module docstring."""

    kind: str = ""
    trainable: bool = False  # True when fit() learns from router pairs (worth scoring them)

    def __init__(self, node_ids: Sequence[str]) -> None:
        if not node_ids:
            raise ValueError("a router needs at least one node")
        if len(set(node_ids)) != len(node_ids):
            raise ValueError(f"duplicate node ids: {list(node_ids)}")
        self.node_ids: tuple[str, ...] = tuple(node_ids)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> Router:
        """The one factory signature of every kind (config.variants.ROUTERS); ``arg`` is what follows
        "kind:" (single only). A router that needs no setting takes only the node ids."""
        return cls(node_ids)

    @property
    def k(self) -> int:
        return len(self.node_ids)

    # ---- weights and fusion ---------------------------------------------------------------------
    @abstractmethod
    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """features[P, D], available[K] bool -> weights[P, K]: rows sum to 1 over the available
        nodes and are exactly 0 on the others (a row of zeros when the router can use none of
        the available nodes, e.g. single:<node> while that node is down)."""

    def domain_weights(self, features: torch.Tensor, available: torch.Tensor,
                       domains: Sequence[str] | None) -> torch.Tensor:
        """Weights given each prompt's domain label as well (``domains[p]``, None when unknown).
        Real routers ignore it; only the evaluation's oracle router reads it."""
        return self.weights(features, available)

    def fuse(
        self, z: torch.Tensor, mask: torch.Tensor, prompt_index: torch.Tensor, features: torch.Tensor,
        domains: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused reward[N], effective weights[P, K]); see the module docstring."""
        self._check(z, mask, prompt_index, features)
        available = mask.any(1)
        with torch.no_grad():
            w = self.domain_weights(features, available, domains)
        r, w_eff = ops.weighted_average(z, mask, w[prompt_index])
        return r, ops.per_prompt_mean(w_eff, prompt_index, features.shape[0])

    def _check(self, z: torch.Tensor, mask: torch.Tensor, prompt_index: torch.Tensor, features: torch.Tensor) -> None:
        if z.shape != mask.shape or z.dim() != 2 or z.shape[0] != self.k:
            raise ValueError(f"z and mask must both be [K={self.k}, N]; got {tuple(z.shape)} and {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool, got {mask.dtype}")
        if prompt_index.shape != (z.shape[1],):
            raise ValueError(f"prompt_index must be [N={z.shape[1]}], got {tuple(prompt_index.shape)}")
        if prompt_index.numel() and (int(prompt_index.min()) < 0 or int(prompt_index.max()) >= features.shape[0]):
            raise ValueError(f"prompt_index must lie in [0, P={features.shape[0]})")

    # ---- training and state ---------------------------------------------------------------------
    def fit(self, data: ScoredRouterPairs) -> dict[str, float]:
        """Train on the scored router pairs; routers that do not learn return {} and change nothing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the same weights (torch.save-able)."""
        return {"kind": self.kind, "node_ids": list(self.node_ids)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind or tuple(state.get("node_ids", ())) != self.node_ids:
            raise ValueError(
                f"router state is for {state.get('kind')!r} over {state.get('node_ids')}, "
                f"not {self.kind!r} over {list(self.node_ids)}"
            )

    # ---- node sets ------------------------------------------------------------------------------
    def align(self, node_ids: Sequence[str], z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reorder rows of z/mask given for ``node_ids`` (e.g. a fan-out whose nodes were added or
        removed) into this router's node order: a node the router knows but ``node_ids`` lacks
        becomes a masked row (NaN), a node the router does not know is ignored (rebuild and refit
        the router to use it)."""
        if tuple(node_ids) == self.node_ids:
            return z, mask
        where = {n: i for i, n in enumerate(node_ids)}
        out_z = torch.full((self.k, z.shape[1]), ops.NAN, dtype=z.dtype)
        out_m = torch.zeros(self.k, z.shape[1], dtype=torch.bool)
        for k, node in enumerate(self.node_ids):
            if node in where:
                out_z[k], out_m[k] = z[where[node]], mask[where[node]]
        return out_z, out_m

    def _uniform(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return ops.masked_softmax(torch.zeros(features.shape[0], self.k), available)


__all__ = ["ScoredRouterPairs", "Router"]
