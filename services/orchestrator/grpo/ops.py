"""GRPO maths as pure tensor functions: advantages, the k3 KL estimator, the clipped surrogate, loss aggregation.

No model, config or trainer objects here; shapes are in each docstring (N = B*G completions, G = group
size, B rows of a (micro-)batch, T completion columns). The recipe follows TRL's GRPO trainer, the
numerical guards follow verl (volcengine/verl core_algos.py).

Conventions:
- Standard deviations are *unbiased* (Bessel's correction, ``torch.std``'s default), as TRL computes
  them. A group with a single scored reward therefore has no spread estimate; it gets advantage 0.
- A NaN reward means "no node scored this completion": it is left out of every mean and std and its
  advantage is 0, so it neither pushes nor pulls the policy.
- A group whose (scored) rewards are all equal carries no signal: its advantages are exactly 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")

# verl's guards: exp() of a log-ratio beyond +-20 overflows float32 gradients, and one runaway token
# must not dominate the KL term.
KL_LOG_RATIO_CLAMP = 20.0
KL_VALUE_CLAMP = 10.0


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


def _nan_std(values: Tensor, valid: Tensor, mean: Tensor, dim: int | None) -> Tensor:
    """Unbiased std over the ``valid`` entries of ``values`` (NaN-free), reduced over ``dim`` (None: all)."""
    sq = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values))
    count = valid.sum() if dim is None else valid.sum(dim, keepdim=True)
    total = sq.sum() if dim is None else sq.sum(dim, keepdim=True)
    return (total / (count - 1).clamp(min=1)).sqrt()


def _spread_free(r: Tensor, valid: Tensor) -> Tensor:
    """Bool[n_groups, 1]: True where the valid rewards of a group are all equal (or fewer than two)."""
    hi = torch.where(valid, r, torch.full_like(r, float("-inf"))).amax(-1, keepdim=True)
    lo = torch.where(valid, r, torch.full_like(r, float("inf"))).amin(-1, keepdim=True)
    return (hi == lo) | (valid.sum(-1, keepdim=True) < 2)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Advantages[N] from rewards[N] laid out group by group (completions of one prompt adjacent).

    A = (r - group mean) / (std + eps), where std is the unbiased std of the group (``scale="group"``),
    of the whole batch (``"batch"``), or no division at all (``"none"``, Dr. GRPO). Means and stds skip
    NaN rewards; NaN rewards and groups without spread get advantage 0. Float32 result.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale_rewards {scale!r}; supported: {', '.join(SCALES)}")
    r = _grouped(rewards, group_size)
    valid = ~torch.isnan(r)
    clean = torch.where(valid, r, torch.zeros_like(r))
    count = valid.sum(-1, keepdim=True)
    mean = clean.sum(-1, keepdim=True) / count.clamp(min=1)
    adv = clean - mean
    if scale == "group":
        adv = adv / (_nan_std(clean, valid, mean, dim=-1) + eps)
    elif scale == "batch":
        batch_mean = clean.sum() / valid.sum().clamp(min=1)
        adv = adv / (_nan_std(clean, valid, batch_mean, dim=None) + eps)
    # Exact zeros (not rounding residue of r - mean) where there is nothing to learn.
    adv = torch.where(valid & ~_spread_free(r, valid), adv, torch.zeros_like(adv))
    return adv.reshape(-1)


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups in rewards[N] whose scored rewards are all equal (no learning signal).

    Groups with fewer than two scored (non-NaN) rewards count as spread-free too.
    """
    r = _grouped(rewards, group_size)
    if r.shape[0] == 0:
        return 0.0
    return float(_spread_free(r, ~torch.isnan(r)).float().mean())


def mean_group_std(rewards: Tensor, group_size: int) -> float:
    """Mean over groups of the population std of each group's scored (non-NaN) rewards: the spread the
    group-relative advantages are made of. Groups with no scored reward are left out; NaN if none has one."""
    r = _grouped(rewards, group_size)
    valid = ~torch.isnan(r)
    scored = valid.any(-1)
    if not scored.any():
        return float("nan")
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    clean = torch.where(valid, r, torch.zeros_like(r))
    mean = clean.sum(-1, keepdim=True) / count
    var = torch.where(valid, (clean - mean) ** 2, torch.zeros_like(r)).sum(-1, keepdim=True) / count
    return float(var.sqrt().squeeze(-1)[scored].mean())


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(policy || reference) per token: exp(d) - d - 1 with d = ref_logp - logp.

    logp[...], ref_logp[...] -> kl[...] (same shape), >= 0, 0 where logp == ref_logp. d is clamped to
    +-20 and the result to <= 10 (verl).
    """
    d = (ref_logp - logp).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1.0).clamp(max=KL_VALUE_CLAMP)


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO/GRPO clipped objective, as a loss to minimise.

    logp[B, T], old_logp[B, T], advantages[B] -> (per_token_loss[B, T], clipped_low[B, T],
    clipped_high[B, T]). loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) with
    ratio = exp(logp - old_logp). The indicators mark tokens whose gradient the clip removed (TRL):
    low where ratio < 1 - eps_low and A < 0, high where ratio > 1 + eps_high and A > 0.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1).to(ratio.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    return per_token, low, high


# ---- aggregation: loss types differ only in how they normalise the masked token sum -------------


# Each takes x[B, T] already zeroed outside the mask, the float mask m[B, T], max_len and n_items.


def _seq_mean_then_batch_mean(x: Tensor, m: Tensor, max_len: int, n_items: float | None) -> Tensor:
    return (x.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()


def _local_token_mean(x: Tensor, m: Tensor, max_len: int, n_items: float | None) -> Tensor:
    return x.sum() / m.sum().clamp(min=1.0)


def _constant_normaliser(x: Tensor, m: Tensor, max_len: int, n_items: float | None) -> Tensor:
    return x.sum() / (x.shape[0] * max_len)


def _global_token_mean(x: Tensor, m: Tensor, max_len: int, n_items: float | None) -> Tensor:
    norm = m.sum() if n_items is None else torch.as_tensor(float(n_items), dtype=x.dtype, device=x.device)
    return x.sum() / norm.clamp(min=1.0)


Aggregator = Callable[[Tensor, Tensor, int, "float | None"], Tensor]

LOSS_AGGREGATORS: dict[str, Aggregator] = {
    "grpo": _seq_mean_then_batch_mean,  # each sequence's token mean, then the mean over sequences
    "bnpo": _local_token_mean,  # token mean over the local (micro-)batch
    "dr_grpo": _constant_normaliser,  # sum / (B * max_completion_length): no length bias (Dr. GRPO)
    "dapo": _global_token_mean,  # sum / active tokens of the whole accumulated batch (DAPO)
}


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    loss_type: str,
    max_completion_length: int,
    num_items_in_batch: float | None = None,
) -> Tensor:
    """Scalar loss from per_token[B, T] over mask[B, T] (1 = real completion token).

    ``max_completion_length`` is used by dr_grpo, ``num_items_in_batch`` (active tokens of the whole
    accumulated batch; default: this batch's) by dapo. Unknown ``loss_type`` raises ValueError.
    """
    fn = LOSS_AGGREGATORS.get(loss_type)
    if fn is None:
        raise ValueError(f"unknown loss_type {loss_type!r}; supported: {', '.join(LOSS_AGGREGATORS)}")
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    # masked_fill rather than a product: padding may hold anything (inf * 0 would be NaN).
    x = per_token.masked_fill(mask == 0, 0.0)
    return fn(x, mask.to(per_token.dtype), max_completion_length, num_items_in_batch)


def accumulation_weight(loss_type: str, rows: int, total_rows: int) -> float:
    """Factor on a micro-batch's loss so that the accumulated gradient is the whole batch's.

    grpo and dr_grpo are means over sequences, so a micro-batch of ``rows`` out of ``total_rows``
    weighs rows / total_rows (exact). bnpo keeps its local token mean and is weighted the same way
    (TRL divides by the number of accumulation steps). dapo already divides by the whole batch's
    token count (``num_items_in_batch``), so it weighs 1.
    """
    if loss_type not in LOSS_AGGREGATORS:
        raise ValueError(f"unknown loss_type {loss_type!r}; supported: {', '.join(LOSS_AGGREGATORS)}")
    return 1.0 if loss_type == "dapo" else rows / total_rows


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    loss_type: str,
    max_completion_length: int,
    num_items_in_batch: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss of one (micro-)batch and its statistics.

    logp[B, T] (with grad), old_logp[B, T], ref_logp[B, T] or None, advantages[B], mask[B, T].
    Per-token loss = clipped surrogate + beta * k3 (the KL term is skipped when beta == 0 or there is
    no reference), then aggregated by ``loss_type``. Stats (masked over real tokens): "kl" (mean k3,
    reported whenever ref_logp is given, NaN otherwise), "clip_low", "clip_high" (fractions of clipped
    tokens), "ratio_mean" (mean importance ratio).
    """
    old_logp = old_logp.detach()
    per_token, low, high = clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high)
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp.detach())
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch)
    with torch.no_grad():
        m = mask.to(logp.dtype)
        n = m.sum().clamp(min=1.0)
        stats = {
            "kl": float((kl * m).sum() / n) if kl is not None else float("nan"),
            "clip_low": float((low.to(m.dtype) * m).sum() / n),
            "clip_high": float((high.to(m.dtype) * m).sum() / n),
            "ratio_mean": float((torch.exp(logp - old_logp) * m).sum() / n),
        }
    return loss, stats


def adaptive_beta(beta: float, kl: float, target_kl: float, horizon: int, max_error: float = 0.2) -> float:
    """The KL coefficient for the next step, from a proportional controller on the measured KL
    (Ziegler et al. 2019, as in TRL's AdaptiveKLController): beta * (1 + clip(kl/target - 1, +-max_error) / horizon).

    A KL above target raises beta, below lowers it; the clip keeps one noisy step from moving beta by
    more than max_error / horizon. A non-finite kl leaves beta unchanged.
    """
    if not math.isfinite(kl):
        return beta
    error = max(-max_error, min(max_error, kl / target_kl - 1.0))
    return beta * (1.0 + error / horizon)


__all__ = [
    "LOSS_AGGREGATORS",
    "adaptive_beta",
    "SCALES",
    "accumulation_weight",
    "aggregate",
    "clipped_surrogate",
    "group_advantages",
    "grpo_loss",
    "kl_k3",
    "mean_group_std",
    "zero_std_fraction",
]
