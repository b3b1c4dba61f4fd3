"""oracle: each prompt routed to the home node of its benchmark (a ceiling for experiments only).

Production routers see only the prompt; this one reads the benchmark label the world's prompt
pool carries, which a real server does not have. It measures how much reward routing could be
worth when the router knew every prompt's domain, the "oracle routing" row of the MoR table.
A benchmark with no home node, or whose home node is down for the step, falls back to the uniform
mean of the available nodes; a single answer its (available) home node did not score gets no
reward, as under single:<node>.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from services.orchestrator.fusion.base import Router

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.reward_node.client import NodeInfo


class OracleRouter(Router):
    """w = one-hot on homes[benchmark of the prompt] when that node is available, else uniform."""

    kind = "oracle"

    def __init__(self, node_ids: Sequence[str], homes: Mapping[str, str]) -> None:
        super().__init__(node_ids)
        unknown = sorted({n for n in homes.values() if n not in self.node_ids})
        if unknown:
            raise ValueError(f"oracle router: home node(s) {', '.join(unknown)} not among the nodes "
                             f"({', '.join(self.node_ids)})")
        self.homes = dict(homes)

    @classmethod
    def build(cls, node_ids: Sequence[str], cfg: RouterSection, *, arg: str, feature_dim: int,
              infos: Mapping[str, NodeInfo] | None, seed: int) -> Router:
        return cls(node_ids, cfg.homes)

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return self._uniform(features, available)

    def domain_weights(self, features: torch.Tensor, available: torch.Tensor,
                       domains: Sequence[str] | None) -> torch.Tensor:
        w = self._uniform(features, available)
        if domains is None:
            return w
        if len(domains) != features.shape[0]:
            raise ValueError(f"oracle router: {len(domains)} domains for {features.shape[0]} prompts")
        for p, domain in enumerate(domains):
            home = self.homes.get(domain)
            if home is not None and bool(available[self.node_ids.index(home)]):
                w[p] = 0.0
                w[p, self.node_ids.index(home)] = 1.0
        return w

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "homes": dict(self.homes)}


__all__ = ["OracleRouter"]
