"""ModelConfig / SFTConfig: defaults, frozen, unknown keys rejected, every field documented."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.models.config import ModelConfig, SFTConfig


def test_defaults_build_tiny_qwen():
    cfg = ModelConfig()
    assert (cfg.arch, cfg.preset, cfg.path, cfg.dtype) == ("qwen2_vl", "tiny", None, "auto")
    assert not cfg.is_checkpoint


@pytest.mark.parametrize("model", [ModelConfig, SFTConfig])
def test_every_field_has_a_description(model):
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert missing == []


@pytest.mark.parametrize("model", [ModelConfig, SFTConfig])
def test_unknown_key_is_an_error(model):
    with pytest.raises(ValidationError, match="extra"):
        model(no_such_field=1)


def test_frozen():
    cfg = ModelConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ValidationError) as err:
        ModelConfig(arch="gpt2")
    assert "qwen2_vl" in str(err.value) and "llava" in str(err.value)


def test_path_marks_checkpoint(tmp_path):
    assert ModelConfig(path=tmp_path).is_checkpoint


def test_sft_warmup_must_be_shorter_than_steps():
    with pytest.raises(ValidationError, match="warmup"):
        SFTConfig(steps=10, warmup=10)
