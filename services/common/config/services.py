"""One settings model per service. Each is a ServiceSettings: YAML first, MOR_<SERVICE>__… env overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config.base import Section, ServiceSettings
from services.common.config.sections import (
    AuthSection,
    BatchingSection,
    LimitsSection,
    MetricsSection,
    ServerSection,
    TLSSection,
)
from services.common.models.config import ModelConfig


class RewardModelSection(Section):
    """Which reward model a node serves and how its score is mixed with the node's own rules."""

    kind: Literal["vlm", "light"] = Field("light", description="RM architecture: a VLM backbone with a scalar head (LoRA), or MiniLM text + small CNN.")
    checkpoint: Path | None = Field(None, description="Directory of the trained RM (safetensors + metadata). Required to serve.")
    rm_weight: float = Field(1.0, ge=0, description="Weight of the learned RM score in the node's hybrid score.")
    format_weight: float = Field(0.0, ge=0, description="Weight of the node's own format check in its hybrid score.")
    length_weight: float = Field(0.0, ge=0, description="Weight of the node's own length check in its hybrid score.")


class PrototypeSection(Section):
    """Optional domain prototype published in GetInfo for similarity routing."""

    publish: bool = Field(False, description="Publish the mean embedding of the node's own prompts in GetInfo.")
    noise_sigma: float = Field(0.0, ge=0, description="Std of Gaussian noise added to the prototype (differential-privacy style).")


class RewardNodeSettings(ServiceSettings):
    """`mor reward-node serve`: one organisation's reward model behind gRPC."""

    model_config = SettingsConfigDict(env_prefix="MOR_REWARD_NODE__")

    node_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$", description="Stable id of this node (its organisation).")
    data_dir: Path | None = Field(None, description="Private preference data of this organisation (training only; never served).")
    model: RewardModelSection = Field(default_factory=RewardModelSection, description="The RM served.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: AuthSection = Field(default_factory=AuthSection, description="Accepted tokens and callers.")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Input limits.")
    batching: BatchingSection = Field(default_factory=BatchingSection, description="Dynamic batching.")
    prototype: PrototypeSection = Field(default_factory=PrototypeSection, description="Domain prototype in GetInfo.")


class SamplerSettings(ServiceSettings):
    """`mor sampler serve`: grouped rollouts of the current policy, versioned weight updates."""

    model_config = SettingsConfigDict(env_prefix="MOR_SAMPLER__")

    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers on CPU/GPU. vllm: GPU only, needs the vllm extra.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy to serve (preset or local checkpoint).")
    max_group_size: int = Field(32, ge=2, description="Largest group size G accepted in Generate.")
    max_prompts: int = Field(64, ge=1, description="Most prompts in one Generate request.")
    max_new_tokens: int = Field(64, ge=1, description="Cap on sampling_params.max_new_tokens.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: AuthSection = Field(default_factory=AuthSection, description="Accepted tokens and callers.")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Input limits.")


class OrchestratorSettings(ServiceSettings):
    """`mor orchestrator serve`: the run-control API."""

    model_config = SettingsConfigDict(env_prefix="MOR_ORCHESTRATOR__")

    runs_dir: Path = Field(Path("runs"), description="Where runs write checkpoints, logs and results.")
    max_concurrent_runs: int = Field(1, ge=1, description="Runs executing at once; more StartRun calls get RESOURCE_EXHAUSTED.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: AuthSection = Field(default_factory=AuthSection, description="Accepted tokens and callers.")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
