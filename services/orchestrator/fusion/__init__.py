"""Reward fusion: routers that turn K nodes' calibrated scores into one reward per response.

    router = build_router(cfg.router.kind, node_ids, cfg.router, feature_dim=embedder.dim, infos=fanout.infos, seed=cfg.seed)
    router.fit(calibration_data)                      # mor / static learn; the others return {}
    r, w = router.fuse(z, mask, prompt_index, features)   # fused reward[N], effective weights[P, K]

Kinds (one file each, one table below):
  mean             uniform over available nodes                       mean.py
  min, max         the harshest / kindest node per response           extremes.py
  single:<node>    one node alone                                     single.py
  static           learned global weights, not input-conditioned      static.py
  mor              gating MLP on the frozen (prompt, image) embedding  learned_router.py
  prototype        similarity to each node's published prototype      prototype.py
  oracle           each benchmark to its home node (evaluation only)  oracle.py
Shared maths: ops.py. Router training (Bradley-Terry): trainer.py.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from services.common.config.run import RouterSection
from services.orchestrator.fusion.base import LogitRouter, Router
from services.orchestrator.fusion.extremes import MaxRouter, MinRouter
from services.orchestrator.fusion.learned_router import MoRRouter
from services.orchestrator.fusion.mean import MeanRouter
from services.orchestrator.fusion.oracle import OracleRouter
from services.orchestrator.fusion.prototype import PrototypeRouter, usable_prototypes
from services.orchestrator.fusion.single import SingleRouter
from services.orchestrator.fusion.static import StaticRouter
from services.orchestrator.fusion.trainer import CalibrationData, train_bradley_terry

if TYPE_CHECKING:
    from services.reward_node.client import NodeInfo


class UnknownRouter(ValueError):
    """A router kind that is not in the table; the message lists the supported kinds."""


_Factory = Callable[..., Router]


def _train_args(cfg: RouterSection, seed: int) -> dict[str, float | int]:
    return {"train_steps": cfg.train_steps, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "holdout_fraction": cfg.holdout_fraction, "seed": seed}


# The one table: kind -> factory(node_ids, cfg, arg, feature_dim, infos, seed). ``arg`` is the part
# after "kind:" (only single uses it).
ROUTERS: dict[str, _Factory] = {
    "mean": lambda ids, cfg, arg, dim, infos, seed: MeanRouter(ids),
    "min": lambda ids, cfg, arg, dim, infos, seed: MinRouter(ids),
    "max": lambda ids, cfg, arg, dim, infos, seed: MaxRouter(ids),
    "single": lambda ids, cfg, arg, dim, infos, seed: SingleRouter(ids, arg),
    "static": lambda ids, cfg, arg, dim, infos, seed: StaticRouter(ids, **_train_args(cfg, seed)),
    "mor": lambda ids, cfg, arg, dim, infos, seed: MoRRouter(
        ids, feature_dim=dim, hidden=cfg.hidden, **_train_args(cfg, seed)),
    "prototype": lambda ids, cfg, arg, dim, infos, seed: PrototypeRouter(
        ids, usable_prototypes(ids, infos, dim), temperature=cfg.prototype_temperature),
    "oracle": lambda ids, cfg, arg, dim, infos, seed: OracleRouter(ids, cfg.homes),
}
_NEEDS_ARG = frozenset({"single"})


def supported_kinds() -> list[str]:
    return [f"{k}:<node_id>" if k in _NEEDS_ARG else k for k in ROUTERS]


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
    factory = ROUTERS.get(name)
    if factory is None or (name in _NEEDS_ARG) != bool(arg):
        raise UnknownRouter(f"unknown router {kind!r}; supported: {', '.join(supported_kinds())}")
    return factory(tuple(node_ids), cfg, arg, feature_dim, infos, seed)


__all__ = [
    "ROUTERS",
    "CalibrationData",
    "LogitRouter",
    "MaxRouter",
    "MeanRouter",
    "MinRouter",
    "MoRRouter",
    "OracleRouter",
    "PrototypeRouter",
    "Router",
    "SingleRouter",
    "StaticRouter",
    "UnknownRouter",
    "build_router",
    "supported_kinds",
    "train_bradley_terry",
]
