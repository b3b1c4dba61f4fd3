"""The variant tables agree with everything that names a kind: every entry imports to a class of its
family with the one factory signature, config fields accept exactly the table's kinds, and every
sampler backend has its wire enum value (and no enum value lacks a backend)."""
from __future__ import annotations

import inspect
import typing

import pytest
from pydantic import ValidationError

from services.common.config import RewardNodeSettings, SamplerSettings
from services.common.config.run import ROUTER_KINDS, RouterSection
from services.common.config.services import RewardModelSection
from services.common.config.variants import (
    REWARD_MODELS,
    ROUTERS,
    ROUTERS_WITH_ARG,
    SAMPLER_BACKENDS,
    implementation,
)
from services.common.wire import policy_sampler_pb2
from services.orchestrator.fusion.base import Router
from services.policy_sampler.backends.base import SamplerBackend
from services.reward_node.rm.base import RewardModel

FAMILIES = [(ROUTERS, Router, "router"), (REWARD_MODELS, RewardModel, "reward model"),
            (SAMPLER_BACKENDS, SamplerBackend, "sampler backend")]


@pytest.mark.parametrize(("table", "base", "what"), FAMILIES)
def test_every_entry_is_a_class_of_its_family_with_the_one_factory_signature(table, base, what) -> None:
    signature = inspect.signature(base.build)
    for kind in table:
        cls = implementation(table, kind, what)
        assert issubclass(cls, base), kind
        assert inspect.signature(cls.build).parameters.keys() == signature.parameters.keys(), kind
        assert getattr(cls, "kind", getattr(cls, "name", kind)) in (kind, "")  # the class says the same name
    with pytest.raises(ValueError, match="supported: " + ", ".join(table)):
        implementation(table, "nope", what)


def test_config_fields_accept_exactly_the_tables_kinds() -> None:
    assert typing.get_args(RewardModelSection.model_fields["kind"].annotation) == tuple(REWARD_MODELS)
    assert typing.get_args(SamplerSettings.model_fields["backend"].annotation) == tuple(SAMPLER_BACKENDS)
    assert set(ROUTER_KINDS) | ROUTERS_WITH_ARG == set(ROUTERS)
    for kind in ROUTER_KINDS:
        if kind != "oracle":  # oracle also needs homes; its own test covers that
            RouterSection(kind=kind)
    RouterSection(kind="single:clinic")
    for bad in ("nope", "single", "mor:clinic"):
        with pytest.raises(ValidationError):
            RouterSection(kind=bad)
    with pytest.raises(ValidationError):
        RewardNodeSettings(node_id="a", model={"kind": "nope"})


def test_every_sampler_backend_has_its_wire_enum_value_and_back() -> None:
    wire = {v.name for v in policy_sampler_pb2.SamplerBackend.DESCRIPTOR.values} - {"SAMPLER_BACKEND_UNSPECIFIED"}
    assert wire == {f"SAMPLER_BACKEND_{name.upper()}" for name in SAMPLER_BACKENDS}


def test_the_helm_charts_offer_exactly_the_tables_kinds() -> None:
    """The charts validate values before anything runs, so they list the kinds too: here is where a
    new RM kind or sampler backend is told to add itself to them."""
    import json
    from pathlib import Path

    helm = Path(__file__).resolve().parents[3] / "deploy" / "helm"
    node = json.loads((helm / "mor-reward-node" / "values.schema.json").read_text())
    server = json.loads((helm / "mor-server" / "values.schema.json").read_text())
    assert set(node["properties"]["model"]["properties"]["kind"]["enum"]) == set(REWARD_MODELS)
    assert set(server["properties"]["sampler"]["properties"]["backend"]["enum"]) == set(SAMPLER_BACKENDS)
