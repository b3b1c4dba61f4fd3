"""Reward fusion: routers that turn K nodes' calibrated scores into one reward per response.

    router = build_router(cfg.router.kind, node_ids, cfg.router, feature_dim=embedder.dim, infos=fanout.infos, seed=cfg.seed)
    router.fit(scored_router_pairs)                   # mor / static learn; the others return {}
    r, w = router.fuse(z, mask, prompt_index, features)   # fused reward[N], effective weights[P, K]

Kinds (one file each, one table: services/common/config/variants.py ROUTERS):
  mean             uniform over available nodes                       mean.py
  min, max         the harshest / kindest node per response           extremes.py
  single:<node>    one node alone                                     single.py
  static           learned global weights, not input-conditioned      static.py
  mor              gating MLP on the frozen (prompt, image) embedding  learned_router.py
  prototype        similarity to each node's published prototype      prototype.py
  oracle           each benchmark to its home node (evaluation only)  oracle.py
Shared maths: ops.py. Router training (LogitRouter, Bradley-Terry): trainer.py.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from services.common.config.run import RouterSection
from services.common.config.variants import ROUTERS, ROUTERS_WITH_ARG, implementation
from services.orchestrator.fusion.base import Router, ScoredRouterPairs
from services.orchestrator.fusion.extremes import MaxRouter, MinRouter
from services.orchestrator.fusion.learned_router import MoRRouter
from services.orchestrator.fusion.mean import MeanRouter
from services.orchestrator.fusion.oracle import OracleRouter
from services.orchestrator.fusion.prototype import PrototypeRouter
from services.orchestrator.fusion.single import SingleRouter
from services.orchestrator.fusion.static import StaticRouter
from services.orchestrator.fusion.trainer import LogitRouter, train_bradley_terry

if TYPE_CHECKING:
    from services.reward_node.client import NodeInfo


class UnknownRouter(ValueError):
    """A router kind that is not in the table; the message lists the supported kinds."""


def supported_kinds() -> list[str]:
    return [f"{k}:<node_id>" if k in ROUTERS_WITH_ARG else k for k in ROUTERS]


def build_router(
    kind: str,
    node_ids: Sequence[str],
    cfg: RouterSection,
    *,
    feature_dim: int,
    infos: Mapping[str, NodeInfo] | None = None,
    seed: int = 0,
) -> Router:
    """The router ``kind`` over ``node_ids`` (in that order). Raises UnknownRouter listing the kinds."""
    name, _, arg = kind.partition(":")
    if name not in ROUTERS or (name in ROUTERS_WITH_ARG) != bool(arg):
        raise UnknownRouter(f"unknown router {kind!r}; supported: {', '.join(supported_kinds())}")
    router_class: type[Router] = implementation(ROUTERS, name, "router")
    return router_class.build(tuple(node_ids), cfg, arg=arg, feature_dim=feature_dim, infos=infos, seed=seed)


__all__ = [
    "LogitRouter",
    "MaxRouter",
    "MeanRouter",
    "MinRouter",
    "MoRRouter",
    "OracleRouter",
    "PrototypeRouter",
    "Router",
    "ScoredRouterPairs",
    "SingleRouter",
    "StaticRouter",
    "UnknownRouter",
    "build_router",
    "supported_kinds",
    "train_bradley_terry",
]
