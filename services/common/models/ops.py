"""Pure tensor helpers of the model layer: token log-probs, masks, positions. No model or config objects."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def suppress_mask(vocab_size: int, suppress_ids: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask[V], True for token ids that generation must never produce."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ids = [i for i in suppress_ids if 0 <= i < vocab_size]
    if ids:
        mask[torch.tensor(ids, device=device)] = True
    return mask


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probs of ``targets`` under softmax(logits / temperature) with suppressed ids removed.

    logits[B, T, V], targets[B, T] (long), mask[V] (bool, True = suppressed) -> logp[B, T] (float32).
    This is the distribution generation samples from when top-k/top-p are off, so the values match
    the log-probs reported by :meth:`VLM.generate` at the same temperature.
    """
    scores = logits.float()
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    if temperature != 1.0:
        scores = scores / temperature
    logp = scores.log_softmax(dim=-1)
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values[B, T] over mask[B, T] (token-level mean); 0 when the mask is empty."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids[B, L] = running count of real tokens - 1 (0 on padding), as `generate` builds them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists -> (ids[B, L], mask[B, L]); L is the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists -> (ids[B, T], mask[B, T])."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask
