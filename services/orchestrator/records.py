"""What a run reports per step: plain dataclasses, written as JSON lines, mirrored into Prometheus
gauges and (by the servicer) into mor.v1.StepMetrics. No gRPC or torch here."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("generate", "score", "fuse", "train", "push")


@dataclass(frozen=True)
class NodeStep:
    """One reward node's part in a step."""

    node_id: str
    responded: bool
    error_code: str = ""
    score_mean: float = float("nan")
    score_std: float = float("nan")
    weight_mean: float = 0.0
    latency_s: float = 0.0


@dataclass(frozen=True)
class StepRecord:
    """Metrics of one GRPO step (see StepMetrics in orchestrator.proto for the wire form)."""

    step: int
    policy_version: int       # the version that sampled this step's completions
    staleness: int            # versions between the sampler's and the trainer's latest push
    reward_mean: float
    reward_std: float
    fused_reward_mean: float
    rule_reward_mean: float
    accuracy_mean: float      # exact match of the sampled answers, on prompts with references
    format_mean: float
    kl: float
    loss: float
    clip_low: float
    clip_high: float
    grad_norm: float
    zero_std_group_fraction: float
    completion_tokens_mean: float
    beta: float = float("nan")  # the KL coefficient this step trained with (changes with grpo.target_kl)
    nodes: list[NodeStep] = field(default_factory=list)
    # seconds per PHASES entry, plus "total" and "generate_wait" (the part of generation the step
    # waited for; less than "generate" when grpo.overlap ran it during the previous step)
    phases: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        nodes = [NodeStep(**n) for n in data.get("nodes", [])]
        return cls(**{**data, "nodes": nodes})


def read_steps(path: Path) -> list[StepRecord]:
    """The step records of a run's steps.jsonl."""
    if not Path(path).is_file():
        return []
    return [StepRecord.from_dict(json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


__all__ = ["PHASES", "NodeStep", "StepRecord", "read_steps"]
