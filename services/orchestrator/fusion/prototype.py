"""prototype: route by similarity of the prompt to each node's published domain prototype.

A node may publish in GetInfo the mean MiniLM embedding of its own training prompts (with
Gaussian noise for differential privacy). The router compares the prompt's MiniLM embedding (the
first ``len(prototype)`` dims of the features: embedding.py puts the text part first for this)
with each prototype by cosine similarity and takes w = softmax(sim / temperature) over the
available nodes. It needs no server labels, so ``fit`` is a no-op.

Nodes without a usable prototype (none published, another embedder, another dimension) get, per
prompt, the mean similarity of the nodes that have one: they are neither preferred nor shut out,
and a router with a single prototype node does not collapse onto it for every prompt by default.
When no node has a prototype the weights are uniform (the mean router).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from services.common.text_encoder import EMBEDDER
from services.orchestrator.fusion import ops
from services.orchestrator.fusion.base import Router

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo

log = logging.getLogger(__name__)


def usable_prototypes(
    node_ids: Sequence[str], infos: Mapping[str, NodeInfo] | None, feature_dim: int
) -> dict[str, list[float]]:
    """The prototypes the router can compare with: MiniLM ones that fit in the feature vector."""
    out: dict[str, list[float]] = {}
    for node in node_ids:
        info = (infos or {}).get(node)
        proto = info.prototype if info is not None else None
        if not proto:
            continue
        if info.prototype_embedder and info.prototype_embedder != EMBEDDER:
            log.warning("node %s: prototype from %r, not %s; routing it by the others' mean", node,
                        info.prototype_embedder, EMBEDDER)
            continue
        if len(proto) > feature_dim:
            log.warning("node %s: prototype has %d dims, features %d; routing it by the others' mean", node,
                        len(proto), feature_dim)
            continue
        out[node] = list(proto)
    return out


class PrototypeRouter(Router):
    """w = masked softmax(cos(text(x), prototype_k) / temperature)."""

    kind = "prototype"

    def __init__(self, node_ids: Sequence[str], prototypes: Mapping[str, Sequence[float]], *, temperature: float) -> None:
        super().__init__(node_ids)
        self._set(prototypes, temperature)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> Router:
        return cls(node_ids, usable_prototypes(node_ids, infos, feature_dim), temperature=cfg.prototype_temperature)

    def _set(self, prototypes: Mapping[str, Sequence[float]], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        dims = {len(v) for v in prototypes.values()}
        if len(dims) > 1:
            raise ValueError(f"prototypes of different lengths: {sorted(dims)}")
        self.temperature = float(temperature)
        self.has = torch.tensor([n in prototypes for n in self.node_ids])
        self.dim = dims.pop() if dims else 0
        table = torch.zeros(self.k, max(self.dim, 1))
        for i, n in enumerate(self.node_ids):
            if n in prototypes:
                table[i, : self.dim] = torch.tensor(list(prototypes[n]), dtype=torch.float32)
        self.table = torch.nn.functional.normalize(table, dim=-1)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """features[P, D] -> cosine similarities [P, K] (nodes without prototype: the row mean of the others)."""
        text = torch.nn.functional.normalize(features[:, : self.dim].float(), dim=-1)
        sim = text @ self.table.T
        fill = sim[:, self.has].mean(-1, keepdim=True)
        return torch.where(self.has, sim, fill.expand_as(sim))

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        if not bool(self.has.any()):
            return self._uniform(features, available)
        return ops.masked_softmax(self.similarity(features) / self.temperature, available)

    def state_dict(self) -> dict[str, Any]:
        protos = {n: self.table[i, : self.dim].tolist() for i, n in enumerate(self.node_ids) if bool(self.has[i])}
        return {**super().state_dict(), "temperature": self.temperature, "prototypes": protos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        # Rebuild from the saved prototypes, so a resumed run routes as before even if a node has
        # since published a new prototype.
        self._set(state["prototypes"], state["temperature"])


__all__ = ["PrototypeRouter", "usable_prototypes"]
