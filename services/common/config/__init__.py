"""Typed configuration (pydantic): frozen sections, one settings model per service, the run config.

Import from here: ``from services.common.config import RunConfig, load_yaml, ConfigError``.
"""
from services.common.config.base import (
    ConfigError,
    Section,
    ServiceSettings,
    build,
    describe_fields,
    format_validation_error,
    load_yaml,
    read_yaml,
    redacted_dump,
)
from services.common.config.run import (
    DistributedSection,
    FanoutSection,
    GRPOSection,
    HybridSection,
    RouterSection,
    RunConfig,
    StackConfig,
)
from services.common.config.sections import (
    AuthSection,
    BatchingSection,
    EndpointSection,
    LimitsSection,
    MetricsSection,
    NodeEndpoint,
    ServerSection,
    TLSSection,
)
from services.common.config.services import OrchestratorSettings, RewardNodeSettings, SamplerSettings

# Names accepted by `mor config show|check KIND`.
CONFIG_KINDS = {
    "reward-node": RewardNodeSettings,
    "sampler": SamplerSettings,
    "orchestrator": OrchestratorSettings,
    "run": RunConfig,
    "stack": StackConfig,
}

__all__ = [
    "CONFIG_KINDS",
    "AuthSection",
    "BatchingSection",
    "ConfigError",
    "EndpointSection",
    "DistributedSection",
    "FanoutSection",
    "GRPOSection",
    "HybridSection",
    "LimitsSection",
    "MetricsSection",
    "NodeEndpoint",
    "OrchestratorSettings",
    "RewardNodeSettings",
    "RouterSection",
    "RunConfig",
    "SamplerSettings",
    "Section",
    "ServerSection",
    "ServiceSettings",
    "StackConfig",
    "TLSSection",
    "build",
    "describe_fields",
    "format_validation_error",
    "load_yaml",
    "read_yaml",
    "redacted_dump",
]
