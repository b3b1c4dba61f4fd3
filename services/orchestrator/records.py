"""What a run reports per step: plain dataclasses, written as JSON lines, mirrored into Prometheus
gauges and (by the servicer) into mor.v1.StepMetrics.

    record = step_record(step, rollouts.policy_version, staleness, fan, rewards, stats, phases)
    export_step(record, output_dir / "steps.jsonl", on_step)

No gRPC here, and no torch import (``step_record`` summarises a step's tensors through their own
methods): reading records needs neither.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common import metrics as m

if TYPE_CHECKING:
    import torch

    from services.orchestrator.fanout import FanoutResult
    from services.orchestrator.grpo.trainer import TrainStats
    from services.orchestrator.rewards import StepRewards

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
    reward_std_in_group: float = float("nan")  # mean within-group std of the total reward (older records: NaN)
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


def _mean(values: torch.Tensor) -> float:
    v = values[~values.isnan()]
    return float(v.mean()) if v.numel() else float("nan")


def _std(values: torch.Tensor) -> float:
    v = values[~values.isnan()]
    return float(v.std(unbiased=False)) if v.numel() else float("nan")


def step_record(step: int, policy_version: int, staleness: int, fan: FanoutResult, rewards: StepRewards,
                stats: TrainStats, phases: dict[str, float]) -> StepRecord:
    """The record of a finished step: ``fan`` its raw node scores, ``rewards`` what the reward pipeline
    made of them, ``stats`` the trainer's step, ``policy_version`` the version that sampled it."""
    nodes = []
    for k, node_id in enumerate(fan.node_ids):
        out = fan.outcomes[node_id]
        row = fan.scores[k][fan.mask[k]]
        nodes.append(NodeStep(node_id, out.responded, out.error_code,
                              float(row.mean()) if row.numel() else float("nan"),
                              float(row.std(unbiased=False)) if row.numel() else float("nan"),
                              float(rewards.weights[:, k].mean()), out.latency_s))
    ref = rewards.has_reference.bool()
    return StepRecord(
        step=step, policy_version=policy_version, staleness=staleness,
        reward_mean=_mean(rewards.total), reward_std=_std(rewards.total),
        reward_std_in_group=rewards.std_in_group, fused_reward_mean=_mean(rewards.fused),
        rule_reward_mean=_mean(rewards.rule),
        accuracy_mean=float(rewards.accuracy[ref].mean()) if ref.any() else float("nan"),
        format_mean=float(rewards.format.float().mean()), kl=stats.kl, beta=stats.beta, loss=stats.loss,
        clip_low=stats.clip_low, clip_high=stats.clip_high, grad_norm=stats.grad_norm,
        zero_std_group_fraction=rewards.zero_std_group_fraction,
        completion_tokens_mean=stats.completion_tokens_mean, nodes=nodes, phases=phases,
    )


def export_step(r: StepRecord, steps_file: Path, on_step: Callable[[StepRecord], None] | None = None) -> None:
    """A line of ``steps_file``, the orchestrator's Prometheus metrics, then ``on_step``."""
    with steps_file.open("a") as fh:
        fh.write(r.to_json() + "\n")
    m.ORCHESTRATOR_STEPS.inc()
    m.ORCHESTRATOR_REWARD_MEAN.set(r.reward_mean)
    m.ORCHESTRATOR_LOSS.set(r.loss)
    m.ORCHESTRATOR_KL.set(r.kl)
    m.ORCHESTRATOR_CLIP_LOW.set(r.clip_low)
    m.ORCHESTRATOR_CLIP_HIGH.set(r.clip_high)
    m.ORCHESTRATOR_ZERO_STD_GROUPS.set(r.zero_std_group_fraction)
    for phase, seconds in r.phases.items():
        if phase in PHASES:
            m.ORCHESTRATOR_PHASE_LATENCY.labels(phase=phase).observe(seconds)
    for n in r.nodes:
        m.ORCHESTRATOR_NODE_WEIGHT.labels(node_id=n.node_id).set(n.weight_mean)
        if n.responded:
            m.ORCHESTRATOR_NODE_SCORE_MEAN.labels(node_id=n.node_id).set(n.score_mean)
            m.ORCHESTRATOR_NODE_SCORE_STD.labels(node_id=n.node_id).set(n.score_std)
    if on_step is not None:
        on_step(r)


__all__ = ["PHASES", "NodeStep", "StepRecord", "export_step", "read_steps", "step_record"]
