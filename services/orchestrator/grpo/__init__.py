"""GRPO: pure maths in ``ops``, the model-side trainer in ``trainer``.

The trainer's names are resolved lazily, so that importing the maths does not import transformers.
"""
from __future__ import annotations

from typing import Any

from services.orchestrator.grpo.ops import (
    LOSS_AGGREGATORS,
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    kl_k3,
    zero_std_fraction,
)

_TRAINER_NAMES = ("GRPOTrainer", "RolloutBatch", "TrainStats")


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from services.orchestrator.grpo import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOSS_AGGREGATORS",
    "GRPOTrainer",
    "RolloutBatch",
    "TrainStats",
    "aggregate",
    "clipped_surrogate",
    "group_advantages",
    "grpo_loss",
    "kl_k3",
    "zero_std_fraction",
]
