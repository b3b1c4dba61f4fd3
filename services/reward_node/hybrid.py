"""The node's hybrid score: its learned RM score mixed with its own rule checks.

    overall = w_rm * rm + w_format * format + w_length * length

    rm      the standardised RM score (about N(0, 1) on the node's own training answers)
    format  1.0 when the answer is well formed (services.common.data.answers.format_ok: one line,
            at most 16 words, starting with a 1-3 word answer), else 0.0
    length  -min(1, max(0, words - budget) / budget): 0 within the word budget, -1 at twice it

The parts a Score call returns are the weighted contributions (``parts["format"]`` is
``w_format * format``), so they add up to ``overall``; a part whose weight is 0 is left out.
Statistics of ``overall`` follow from the held-out mean and covariance of the unweighted parts
(kept in the checkpoint metadata) for any weights, so GetInfo stays exact when only the weights
in the config change.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.common.config.services import RewardModelSection
from services.common.data.answers import format_ok

PART_NAMES: tuple[str, ...] = ("rm", "format", "length")


@dataclass(frozen=True)
class HybridWeights:
    """Weights of the three parts and the length budget (from the node's model section)."""

    rm: float = 1.0
    format: float = 0.0
    length: float = 0.0
    length_budget_words: int = 16

    @classmethod
    def from_section(cls, section: RewardModelSection) -> HybridWeights:
        return cls(section.rm_weight, section.format_weight, section.length_weight, section.length_budget_words)

    def vector(self) -> torch.Tensor:
        """[3] weights in PART_NAMES order (float64)."""
        return torch.tensor([self.rm, self.format, self.length], dtype=torch.float64)

    def active(self) -> tuple[str, ...]:
        """Names of the parts with a non-zero weight."""
        return tuple(n for n, w in zip(PART_NAMES, (self.rm, self.format, self.length), strict=True) if w != 0)


def format_part(response: str) -> float:
    """1.0 for a well-formed answer, else 0.0."""
    return float(format_ok(response))


def length_part(response: str, budget: int) -> float:
    """0 within ``budget`` words, falling linearly to -1 at twice the budget (and staying there)."""
    excess = max(0, len(response.split()) - budget)
    return -min(1.0, excess / budget)


def parts_matrix(rm_scores: torch.Tensor, responses: Sequence[str], budget: int) -> torch.Tensor:
    """Unweighted parts[N, 3] (rm, format, length) of N answers (float64)."""
    rules = [[format_part(r), length_part(r, budget)] for r in responses]
    rule_t = torch.tensor(rules, dtype=torch.float64).reshape(len(responses), 2)
    return torch.cat([rm_scores.detach().double().reshape(-1, 1), rule_t], dim=1)


def combine(
    rm_scores: Sequence[float], responses: Sequence[str], weights: HybridWeights
) -> tuple[list[float], list[dict[str, float]]]:
    """overall[N] and the weighted parts of each answer (see the module docstring).

    Plain Python on purpose: it runs per request on the event loop, where tiny torch ops cost more
    than the arithmetic."""
    active = weights.active()
    overall: list[float] = []
    named: list[dict[str, float]] = []
    for rm, response in zip(rm_scores, responses, strict=True):
        parts = {"rm": weights.rm * float(rm)}
        if weights.format:
            parts["format"] = weights.format * format_part(response)
        if weights.length:
            parts["length"] = weights.length * length_part(response, weights.length_budget_words)
        overall.append(sum(parts.values()))
        named.append({k: v for k, v in parts.items() if k in active})
    return overall, named


def part_stats(parts: torch.Tensor) -> dict[str, list]:
    """Mean[3] and covariance[3, 3] (population) of unweighted parts[N, 3], as JSON-able lists."""
    x = parts.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(x.shape[0], 1)
    return {"names": list(PART_NAMES), "mean": mean.tolist(), "cov": cov.tolist()}


def overall_stats(stats: dict[str, list], weights: HybridWeights) -> tuple[float, float]:
    """(mean, std) of ``overall`` under ``weights``, from ``part_stats`` output: w.mu and sqrt(w' C w)."""
    w = weights.vector()
    mean = float(w @ torch.tensor(stats["mean"], dtype=torch.float64))
    var = float(w @ torch.tensor(stats["cov"], dtype=torch.float64) @ w)
    return mean, max(var, 0.0) ** 0.5


__all__ = [
    "PART_NAMES",
    "HybridWeights",
    "combine",
    "format_part",
    "length_part",
    "overall_stats",
    "part_stats",
    "parts_matrix",
]
