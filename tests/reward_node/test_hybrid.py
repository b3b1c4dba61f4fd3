"""Node-side rule parts and their mixing with the RM score (closed form)."""
from __future__ import annotations

import pytest
import torch

from services.reward_node.hybrid import (
    HybridWeights,
    combine,
    format_part,
    length_part,
    overall_stats,
    part_stats,
    parts_matrix,
)


def test_format_part_follows_format_ok() -> None:
    assert format_part("three") == 1.0
    assert format_part("3 because there are three shapes") == 1.0
    assert format_part("line one\nline two") == 0.0
    assert format_part("a b c d e") == 0.0  # the short answer before punctuation has 5 words


@pytest.mark.parametrize(("words", "expected"), [(4, 0.0), (5, 0.0), (6, -0.2), (10, -1.0), (30, -1.0)])
def test_length_part_is_zero_within_budget_then_linear_to_minus_one(words: int, expected: float) -> None:
    assert length_part(" ".join(["w"] * words), budget=5) == pytest.approx(expected)


def test_combine_parts_are_weighted_and_sum_to_overall() -> None:
    w = HybridWeights(rm=2.0, format=0.5, length=1.0, length_budget_words=2)

    overall, parts = combine([1.0, -1.0], ["three", "one two three four"], w)

    assert parts == [{"rm": 2.0, "format": 0.5, "length": 0.0}, {"rm": -2.0, "format": 0.0, "length": -1.0}]
    assert overall == [2.5, -3.0]


def test_zero_weight_parts_are_left_out() -> None:
    overall, parts = combine([0.25], ["x y z w v u t"], HybridWeights(rm=1.0))

    assert parts == [{"rm": 0.25}] and overall == [0.25]


def test_overall_stats_match_the_empirical_mean_and_std() -> None:
    torch.manual_seed(0)
    responses = ["three", "3 because there are three shapes here", "a b c d e f g h i j k l m n o p q r"] * 20
    rm = torch.randn(len(responses))
    w = HybridWeights(rm=1.5, format=0.3, length=0.7, length_budget_words=4)
    parts = parts_matrix(rm, responses, 4)
    overall, _ = combine(rm.tolist(), responses, w)

    mean, std = overall_stats(part_stats(parts), w)

    ov = torch.tensor(overall, dtype=torch.float64)
    assert mean == pytest.approx(float(ov.mean()), abs=1e-9)
    assert std == pytest.approx(float(ov.std(unbiased=False)), abs=1e-9)
