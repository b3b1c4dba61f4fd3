"""Rule rewards and the hybrid reward, closed form."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from services.common.config.run import HybridSection
from services.orchestrator.rewards import hybrid_reward, rm_available, rule_rewards

NAN = float("nan")


def test_rule_rewards_format_accuracy_and_reference_flags() -> None:
    responses = ["3", "three because I count them", "4", "a very long answer\nover two lines", "red"]
    references = [["3"], ["3", "three", "3"], ["3"], ["3"], []]

    fmt, acc, has_ref = rule_rewards(responses, references)

    assert fmt.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert acc.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]  # 'three' normalises to '3'; no reference -> 0
    assert has_ref.tolist() == [True, True, True, True, False]
    assert fmt.dtype == acc.dtype == torch.float32 and has_ref.dtype == torch.bool


def test_rule_rewards_needs_one_reference_list_per_response() -> None:
    with pytest.raises(ValueError, match="2 responses but 1"):
        rule_rewards(["a", "b"], [["a"]])


def test_hybrid_reward_weights_each_part() -> None:
    cfg = HybridSection(rm_weight=2.0, format_weight=0.5, accuracy_weight=3.0)
    fused = torch.tensor([1.0, -0.5, 0.25])
    fmt = torch.tensor([1.0, 0.0, 1.0])
    acc = torch.tensor([1.0, 1.0, 1.0])
    has_ref = torch.tensor([True, True, False])  # accuracy without a reference does not count

    r = hybrid_reward(fused, fmt, acc, has_ref, cfg)

    assert_close(r, torch.tensor([2.0 + 0.5 + 3.0, -1.0 + 0.0 + 3.0, 0.5 + 0.5 + 0.0]))


def test_a_nan_fused_reward_contributes_nothing_but_the_rules_stay() -> None:
    cfg = HybridSection(rm_weight=1.0, format_weight=0.2, accuracy_weight=0.5)
    fused = torch.tensor([NAN, 1.0])

    r = hybrid_reward(fused, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([True, True]), cfg)

    assert_close(r, torch.tensor([0.7, 1.2]))
    assert rm_available(fused).tolist() == [False, True]


def test_hybrid_reward_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N\]"):
        hybrid_reward(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2, dtype=torch.bool), HybridSection())


def test_std_in_group_is_the_mean_of_each_groups_own_spread() -> None:
    from services.orchestrator.grpo.ops import mean_group_std

    # groups [0, 2] (std 1), [5, 5] (std 0), [1, NaN] (one value: std 0): the batch std is far larger
    values = torch.tensor([0.0, 2.0, 5.0, 5.0, 1.0, NAN])
    assert mean_group_std(values, 2) == pytest.approx(1.0 / 3)
    assert mean_group_std(torch.tensor([]), 2) != mean_group_std(torch.tensor([]), 2)  # NaN: no groups
    assert mean_group_std(torch.tensor([0.0, 2.0, NAN, NAN]), 2) == pytest.approx(1.0)  # an unscored group is left out
