"""The variant tables: every router, reward-model architecture and sampler backend, declared once.

Each table maps a kind's name to the class that implements it, as ``"module:Class"``; the class is
imported only when something is built, so configs stay free of torch. Config fields take their
allowed values from these tables, and each family builds through one classmethod with one
signature:

  ROUTERS           Router.build(node_ids, cfg: RouterSection, *, arg, feature_dim, infos, seed)
  REWARD_MODELS     RewardModel.build(section: RewardModelSection)
  SAMPLER_BACKENDS  SamplerBackend.build(settings: SamplerSettings)

Adding a kind is its own file plus one entry here. Two outside lists name kinds too, and
tests/common/config/test_variants.py fails until they agree: a sampler backend needs its value of
the SamplerBackend enum in protos/mor/v1/policy_sampler.proto, and an RM kind or sampler backend its
name in the Helm charts' values.schema.json enums (deploy/helm/mor-reward-node: model.kind;
mor-server: sampler.backend), which check values before anything is deployed.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Literal

ROUTERS: dict[str, str] = {
    "mor": "services.orchestrator.fusion.learned_router:MoRRouter",
    "prototype": "services.orchestrator.fusion.prototype:PrototypeRouter",
    "mean": "services.orchestrator.fusion.mean:MeanRouter",
    "min": "services.orchestrator.fusion.extremes:MinRouter",
    "max": "services.orchestrator.fusion.extremes:MaxRouter",
    "static": "services.orchestrator.fusion.static:StaticRouter",
    "oracle": "services.orchestrator.fusion.oracle:OracleRouter",
    "single": "services.orchestrator.fusion.single:SingleRouter",
}
# Kinds written "kind:<arg>" (single:<node_id>); every other kind takes no argument.
ROUTERS_WITH_ARG = frozenset({"single"})

REWARD_MODELS: dict[str, str] = {
    "light": "services.reward_node.rm.light:LightRM",
    "vlm": "services.reward_node.rm.vlm_rm:VlmRM",
}

SAMPLER_BACKENDS: dict[str, str] = {
    "hf": "services.policy_sampler.backends.hf:HFBackend",
    "vllm": "services.policy_sampler.backends.vllm_backend:VLLMBackend",
}


def names(table: Mapping[str, str]) -> Any:
    """``Literal[...]`` of a table's kinds, for a pydantic field (its JSON schema lists them)."""
    return Literal[tuple(table)]  # type: ignore[valid-type]


def implementation(table: Mapping[str, str], kind: str, what: str) -> Any:
    """The class registered for ``kind``; an unknown kind raises ValueError listing the known ones."""
    target = table.get(kind)
    if target is None:
        raise ValueError(f"unknown {what} {kind!r}; supported: {', '.join(table)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


SamplerBackendName = names(SAMPLER_BACKENDS)
RewardModelKind = names(REWARD_MODELS)

__all__ = ["REWARD_MODELS", "ROUTERS", "ROUTERS_WITH_ARG", "SAMPLER_BACKENDS", "RewardModelKind",
           "SamplerBackendName", "implementation", "names"]
