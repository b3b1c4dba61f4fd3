"""WorldConfig validation: every error names the field that is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.common.data.config import ClientSpec, WorldConfig, default_clients, largest_remainder


def _client(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "acme", "domain_mix": {"shapes": 1.0}, "style": "word", "rm_arch": "vlm"}
    base.update(kw)
    return base


def _error(data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        WorldConfig.model_validate(data)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


def test_defaults_are_valid_and_have_three_training_clients() -> None:
    cfg = WorldConfig()
    assert [c.name for c in cfg.clients] == ["clinic", "bank", "school"]
    assert [c.name for c in cfg.all_clients()] == ["clinic", "bank", "school", "market", "lab"]
    assert {c.style for c in cfg.clients} == {"word", "digits", "justified"}
    assert cfg.noisy_spec() is not None and cfg.noisy_spec().label_noise == cfg.noisy_flip_share


def test_unknown_benchmark_in_domain_mix_names_field() -> None:
    loc, msg = _error({"clients": [_client(domain_mix={"shapes": 1.0, "maps": 1.0})]})
    assert loc == "clients.0.domain_mix" and "maps" in msg and "supported" in msg


def test_non_positive_weight_names_field() -> None:
    loc, msg = _error({"clients": [_client(domain_mix={"shapes": 0.0})]})
    assert loc == "clients.0.domain_mix" and "> 0" in msg


def test_duplicate_client_names_name_both_fields() -> None:
    _, msg = _error({"clients": [_client(), _client()]})
    assert "clients[1].name" in msg and "clients[0].name" in msg and "duplicate" in msg


def test_client_clashing_with_noisy_client_name() -> None:
    _, msg = _error({"clients": [_client(name="market")]})
    assert "clients[0].name" in msg and "noisy_client_name" in msg


def test_bad_client_name_and_reserved_name() -> None:
    loc, msg = _error({"clients": [_client(name="Bad Name")]})
    assert loc == "clients.0.name"
    loc, msg = _error({"clients": [_client(name="server")]})
    assert loc == "clients.0.name" and "reserved" in msg


def test_style_literal_lists_allowed_values() -> None:
    loc, msg = _error({"clients": [_client(style="fancy")]})
    assert loc == "clients.0.style" and "justified" in msg


def test_label_noise_bounds() -> None:
    loc, _ = _error({"clients": [_client(label_noise=0.7)]})
    assert loc == "clients.0.label_noise"


def test_unknown_top_level_benchmark() -> None:
    loc, msg = _error({"benchmarks": {"maps": {"train": 10, "test": 10}}})
    assert loc == "benchmarks" and "maps" in msg


def test_domain_mix_outside_configured_benchmarks() -> None:
    _, msg = _error({"benchmarks": {"shapes": {"train": 3000, "test": 300}}})
    assert "clients[0].domain_mix" in msg


def test_capacity_error_names_the_split() -> None:
    _, msg = _error({"benchmarks": {b: {"train": 100, "test": 600} for b in ("shapes", "digits", "charts")}})
    assert "benchmarks." in msg and ".train" in msg and "needed" in msg


def test_test_capacity_error() -> None:
    _, msg = _error({"benchmarks": {b: {"train": 1500, "test": 10} for b in ("shapes", "digits", "charts")}})
    assert ".test" in msg


def test_unknown_key_is_forbidden() -> None:
    loc, _ = _error({"sed": 3})
    assert loc == "sed"


def test_config_is_frozen() -> None:
    cfg = WorldConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    for model in (WorldConfig, ClientSpec):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_largest_remainder_sums_and_is_order_free() -> None:
    a = largest_remainder({"shapes": 0.7, "digits": 0.15, "charts": 0.15}, 401)
    b = largest_remainder({"charts": 0.15, "digits": 0.15, "shapes": 0.7}, 401)
    assert a == b and sum(a.values()) == 401 and a["shapes"] == 281


def test_default_clients_pair_counts_follow_mix() -> None:
    clinic = default_clients()[0]
    assert clinic.pairs_per_benchmark("train") == {"charts": 100, "digits": 100, "shapes": 1800}
    assert clinic.labelled_per_benchmark() == {"charts": 150, "digits": 150, "shapes": 2700}
    assert clinic.home == "shapes" and clinic.kind_mix == {"correctness": 0.7, "style": 0.2, "format": 0.1}


def test_unknown_pair_kind_names_field() -> None:
    loc, msg = _error({"clients": [_client(kind_mix={"vibes": 1.0})]})
    assert loc == "clients.0.kind_mix" and "vibes" in msg and "correctness" in msg
