"""Pure tensor maths of reward fusion: masked softmax, masked weighted average, masked min/max.

No state, no config, no routers: every router calls these (the Flower pattern of keeping
aggregation helpers apart from strategies). Shapes are in each docstring; K nodes, N responses,
P prompts. ``prompt_index[N]`` says which prompt (row of ``features``) each response answers.

The one rule throughout: a node that did not score a response is *masked*, never filled with 0.
A z-score of 0 means "average answer"; filling a missing score with it would pull the fused reward
of that response towards the node's mean and silently bias the comparison within its group.
"""
from __future__ import annotations

import torch

NAN = float("nan")


def masked_softmax(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Softmax over the available entries of the last dim; exactly 0 on the others.

    logits[..., K] float, available[..., K] bool (broadcastable). A row with no available entry
    is all zeros (it cannot sum to 1; callers turn it into a NaN reward, never a made-up one).
    """
    available = available.expand_as(logits)
    filled = logits.masked_fill(~available, float("-inf"))
    # A row of all -inf would give NaN; shift it to finite values first, then zero it.
    none = ~available.any(-1, keepdim=True)
    filled = torch.where(none, torch.zeros_like(filled), filled)
    w = torch.softmax(filled, dim=-1)
    return torch.where(none | ~available, torch.zeros_like(w), w)


def renormalise(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weights restricted to the masked-in entries of each row and rescaled to sum to 1.

    weights[R, K] >= 0, mask[R, K] bool -> [R, K]. A row whose masked-in weight is 0 (no entry,
    or only entries the router gave no weight) comes back all zeros.
    """
    kept = torch.where(mask, weights, torch.zeros_like(weights))
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), torch.zeros_like(kept))


def weighted_average(z: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response weighted mean of node scores over the nodes that scored it.

    z[K, N] (NaN allowed where masked out), mask[K, N] bool, weights[N, K] (a row per response,
    e.g. the router's per-prompt weights gathered by prompt_index) ->
    (r[N], w_eff[N, K]): w_eff is ``weights`` renormalised over the nodes that scored each
    response; r = sum_k w_eff * z, and NaN where no scoring node has weight.
    """
    m = mask.T  # [N, K]
    w_eff = renormalise(weights, m)
    zt = torch.where(m, z.T, torch.zeros_like(z.T))  # masked entries have weight 0; zero them so NaN * 0 is not NaN
    r = (w_eff * zt).sum(-1)
    r = torch.where(w_eff.sum(-1) > 0, r, torch.full_like(r, NAN))
    return r, w_eff


def masked_extreme(z: torch.Tensor, mask: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response min (largest=False) or max over the nodes that scored it.

    z[K, N], mask[K, N] bool -> (value[N], index[N] long). value is NaN and index -1 where no
    node scored the response. Ties go to the lowest node index.
    """
    fill = float("-inf") if largest else float("inf")
    filled = torch.where(mask, z, torch.full_like(z, fill))
    value, index = (filled.max(0) if largest else filled.min(0))
    any_ = mask.any(0)
    value = torch.where(any_, value, torch.full_like(value, NAN))
    index = torch.where(any_, index, torch.full_like(index, -1))
    return value, index


def one_hot_rows(index: torch.Tensor, k: int) -> torch.Tensor:
    """index[N] long in [-1, K) -> [N, K] float one-hot rows (all zeros where index is -1)."""
    out = torch.zeros(index.shape[0], k)
    valid = index >= 0
    out[valid.nonzero(as_tuple=True)[0], index[valid]] = 1.0
    return out


def per_prompt_mean(rows: torch.Tensor, prompt_index: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """Mean of the per-response rows of each prompt, over the responses whose row is not all zero.

    rows[N, K], prompt_index[N] long in [0, P) -> [P, K]. A response whose row is all zeros (no
    node scored it) does not count; a prompt with no counted response gets a row of zeros.
    Used for the *effective* weights a router reports: what each node actually contributed.
    """
    counted = (rows.sum(-1) > 0).to(rows.dtype)  # [N]
    total = torch.zeros(n_prompts, rows.shape[1], dtype=rows.dtype).index_add_(0, prompt_index, rows * counted[:, None])
    count = torch.zeros(n_prompts, dtype=rows.dtype).index_add_(0, prompt_index, counted)
    return torch.where(count[:, None] > 0, total / count.clamp_min(1.0)[:, None], torch.zeros_like(total))


def pair_margin(weights: torch.Tensor, z_chosen: torch.Tensor, z_rejected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fused reward margin of preference pairs: sum_k w[p, k] * (z_chosen[k, p] - z_rejected[k, p]).

    weights[P, K] (0 where mask is False), z_chosen / z_rejected[K, P], mask[K, P] bool -> [P].
    Masked-out entries may hold NaN; they contribute exactly 0.
    """
    diff = torch.where(mask, z_chosen - z_rejected, torch.zeros_like(z_chosen))
    return (weights * diff.T).sum(-1)


__all__ = [
    "masked_extreme",
    "masked_softmax",
    "one_hot_rows",
    "pair_margin",
    "per_prompt_mean",
    "renormalise",
    "weighted_average",
]
