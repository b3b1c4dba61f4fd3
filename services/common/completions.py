"""One sampled completion: what the sampler returns and the trainer learns from (both sides use it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Completion:
    """One completion. `token_ids` exclude the prompt and include the final end-of-turn token when
    finish_reason is "stop"; `logprobs[i]` is the log-probability of token_ids[i] under the
    distribution it was sampled from (after suppression, temperature and top-k/top-p)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: Literal["stop", "length"]


__all__ = ["Completion"]
