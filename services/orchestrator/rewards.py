"""The hybrid reward: the fused reward-model reward plus server-side rule rewards.

    fmt, acc, has_ref = rule_rewards(responses, references)
    r_total = hybrid_reward(fused, fmt, acc, has_ref, cfg.hybrid)

    # one step's whole pipeline: calibrate -> embed -> fuse -> rules -> hybrid -> advantages
    r = step_rewards(prompts, answers, scores, mask, calibration=..., embedder=..., router=...,
                     hybrid=cfg.hybrid, grpo=cfg.grpo)

Rules (services.common.data.answers, closed form):
  format     1.0 when answers.format_ok (one line, short answer first), else 0.0
  accuracy   answers.exact_match against the prompt's reference answers (normalised extracted
             answer == the majority reference); 0.0 and has_reference False when the prompt pool
             has no reference for that prompt.

r_total = rm_weight * fused + format_weight * format + accuracy_weight * accuracy * has_reference

A NaN fused reward (no node scored the response) contributes 0 while the rule part is kept: the
rules are computed on the server and are still true, and a response is not a worse answer
because a node was down. Within a group every response is normally scored by the same nodes (a
node is dropped for a whole step), so the missing part is the same for all of them and cancels in
the group-relative advantage. ``rm_available`` tells the caller where that happened.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from services.common.data.answers import exact_match, format_ok
from services.orchestrator.grpo.ops import group_advantages, mean_group_std, zero_std_fraction

if TYPE_CHECKING:
    from services.common.config.run import GRPOSection, HybridSection
    from services.orchestrator.calibration import NodeCalibration
    from services.orchestrator.embedding import PromptEmbedder
    from services.orchestrator.fusion.base import Router
    from services.orchestrator.prompts import Prompt


def rule_rewards(
    responses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(format[N] float, accuracy[N] float, has_reference[N] bool) of each response; ``references[n]``
    are the reference answers of response n's prompt (empty: none)."""
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} reference lists")
    fmt = torch.tensor([float(format_ok(r)) for r in responses], dtype=torch.float32)
    has_ref = torch.tensor([len(refs) > 0 for refs in references], dtype=torch.bool)
    acc = torch.tensor([exact_match(r, refs) if refs else 0.0 for r, refs in zip(responses, references, strict=True)],
                       dtype=torch.float32)
    return fmt, acc, has_ref


def hybrid_reward(
    fused: torch.Tensor, fmt: torch.Tensor, acc: torch.Tensor, has_ref: torch.Tensor, cfg: HybridSection
) -> torch.Tensor:
    """r_total[N] (see the module docstring); all inputs are [N]."""
    if not (fused.shape == fmt.shape == acc.shape == has_ref.shape) or fused.dim() != 1:
        raise ValueError("fused, fmt, acc and has_ref must all be [N]")
    rm = torch.where(torch.isnan(fused), torch.zeros_like(fused), fused).float()
    return cfg.rm_weight * rm + rule_reward(fmt, acc, has_ref, cfg)


def rule_reward(fmt: torch.Tensor, acc: torch.Tensor, has_ref: torch.Tensor, cfg: HybridSection) -> torch.Tensor:
    """The rule part of r_total[N]: format_weight * format + accuracy_weight * accuracy * has_reference."""
    return cfg.format_weight * fmt.float() + cfg.accuracy_weight * torch.where(has_ref, acc.float(), torch.zeros_like(acc))


def rm_available(fused: torch.Tensor) -> torch.Tensor:
    """[N] bool: where the fused reward-model reward exists (some node scored the response)."""
    return ~torch.isnan(fused)


@dataclass(frozen=True)
class StepRewards:
    """Every part of one step's reward; N = B*G answers group-major, K nodes, P = B prompts."""

    z: torch.Tensor              # [K, N] calibrated node scores, NaN where a node gave none
    fused: torch.Tensor          # [N] router-fused z; NaN where no node scored, empty answers set
    weights: torch.Tensor        # [P, K] the router's effective weights per prompt
    format: torch.Tensor         # [N] float
    accuracy: torch.Tensor       # [N] float
    has_reference: torch.Tensor  # [N] bool
    rule: torch.Tensor           # [N] the rule part of total
    total: torch.Tensor          # [N] r_total
    advantages: torch.Tensor     # [N] group-relative, finite
    zero_std_group_fraction: float  # groups whose total has no spread: no learning signal
    std_in_group: float          # mean over groups of the total's std within the group


def step_rewards(
    prompts: Sequence[Prompt], answers: Sequence[Sequence[str]], scores: torch.Tensor, mask: torch.Tensor, *,
    calibration: NodeCalibration, embedder: PromptEmbedder, router: Router, hybrid: HybridSection,
    grpo: GRPOSection,
) -> StepRewards:
    """One step's reward pipeline: calibrate -> embed -> fuse -> rules -> hybrid -> advantages.

    ``answers[i]`` are prompt i's G answers; ``scores``/``mask`` [K, N] the raw node scores of all
    of them (empty answers unscored). The calibration's statistics take in ``scores`` after the
    z-scores are computed, so a step is judged by the statistics of the steps before it."""
    texts = [a for group in answers for a in group]
    references = [p.references for p, group in zip(prompts, answers, strict=True) for _ in group]
    z = calibration.calibrate(scores, mask)
    calibration.update(scores, mask)
    features = embedder.embed([p.question for p in prompts], [p.image for p in prompts])
    prompt_index = torch.arange(len(prompts)).repeat_interleave(grpo.group_size)
    fused, weights = router.fuse(z, mask, prompt_index, features, domains=[p.benchmark for p in prompts])
    # Nodes refuse empty answers, so they reach here unscored: a fixed reward stands in for the nodes'.
    empty = torch.tensor([not t.strip() for t in texts])
    fused = fused.masked_fill(empty, hybrid.empty_response_reward)
    fmt, acc, has_ref = rule_rewards(texts, references)
    total = hybrid_reward(fused, fmt, acc, has_ref, hybrid)
    return StepRewards(
        z=z, fused=fused, weights=weights, format=fmt, accuracy=acc, has_reference=has_ref,
        rule=rule_reward(fmt, acc, has_ref, hybrid), total=total,
        advantages=group_advantages(total, grpo.group_size, grpo.scale_rewards),
        zero_std_group_fraction=zero_std_fraction(total, grpo.group_size),
        std_in_group=mean_group_std(total, grpo.group_size),
    )


__all__ = ["StepRewards", "hybrid_reward", "rm_available", "rule_reward", "rule_rewards", "step_rewards"]
