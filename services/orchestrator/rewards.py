"""The hybrid reward: the fused reward-model reward plus server-side rule rewards.

    fmt, acc, has_ref = rule_rewards(responses, references)
    r_total = hybrid_reward(fused, fmt, acc, has_ref, cfg.hybrid)

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
from typing import TYPE_CHECKING

import torch

from services.common.data.answers import exact_match, format_ok

if TYPE_CHECKING:
    from services.common.config.run import HybridSection


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
    rule = cfg.format_weight * fmt.float() + cfg.accuracy_weight * torch.where(has_ref, acc.float(), torch.zeros_like(acc))
    return cfg.rm_weight * rm + rule


def rm_available(fused: torch.Tensor) -> torch.Tensor:
    """[N] bool: where the fused reward-model reward exists (some node scored the response)."""
    return ~torch.isnan(fused)


__all__ = ["hybrid_reward", "rm_available", "rule_rewards"]
