"""GRPO maths: closed-form values on hand-made tensors, and agreement with a plain per-sequence loop."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from services.orchestrator.grpo import ops
from services.orchestrator.grpo.ops import (
    LOSS_AGGREGATORS,
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    kl_k3,
    zero_std_fraction,
)

NAN = float("nan")
EPS = 1e-4


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- advantages ----------------------------------------------------------------------------------


def test_group_scale_divides_by_the_unbiased_group_std():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])

    adv = group_advantages(rewards, 2, "group")

    # group (1, 3): mean 2, unbiased std sqrt(2); (2, 2): no spread; (0, 4): mean 2, std sqrt(8)
    s1, s3 = math.sqrt(2.0) + EPS, math.sqrt(8.0) + EPS
    assert_close(adv, torch.tensor([-1 / s1, 1 / s1, 0.0, 0.0, -2 / s3, 2 / s3]))


def test_batch_scale_divides_by_the_std_of_the_whole_batch():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])

    adv = group_advantages(rewards, 2, "batch")

    # batch mean 2, squared deviations 1+1+0+0+4+4 = 10, unbiased variance 10/5 = 2
    s = math.sqrt(2.0) + EPS
    assert_close(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0, -2 / s, 2 / s]))


def test_none_scale_only_subtracts_the_group_mean():
    rewards = torch.tensor([1.0, 3.0, 5.0, 0.0, 0.5, 1.0])

    adv = group_advantages(rewards, 3, "none")

    assert_close(adv, torch.tensor([-2.0, 0.0, 2.0, -0.5, 0.0, 0.5]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_without_spread_gets_exactly_zero(scale):
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.2, 0.3])  # 0.1 * 3 / 3 is not 0.1 in floats

    adv = group_advantages(rewards, 3, scale)

    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert bool((adv[3:] != 0).all())


def test_nan_rewards_are_skipped_and_get_zero_advantage():
    rewards = torch.tensor([1.0, NAN, 4.0, 2.0, 2.0, NAN, NAN, NAN, NAN])

    adv = group_advantages(rewards, 3, "group")

    # group 1 scored (1, 4): mean 2.5, unbiased std sqrt(4.5); group 2 no spread; group 3 unscored
    s = math.sqrt(4.5) + EPS
    assert_close(adv, torch.tensor([-1.5 / s, 0.0, 1.5 / s, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))


def test_nan_rewards_are_left_out_of_the_batch_std():
    rewards = torch.tensor([1.0, NAN, 3.0, 0.0, 4.0, NAN])

    adv = group_advantages(rewards, 3, "batch")

    # scored: 1, 3, 0, 4 -> mean 2, squared deviations 1+1+4+4 = 10, unbiased variance 10/3
    s = math.sqrt(10.0 / 3.0) + EPS
    assert_close(adv, torch.tensor([-1 / s, 0.0, 1 / s, -2 / s, 2 / s, 0.0]))


def test_a_group_of_one_has_no_baseline_and_gets_zero():
    adv = group_advantages(torch.tensor([0.3, 0.9, -1.0]), 1, "group")

    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_advantage_inputs_are_checked():
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.ones(4), 2, "median")
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 2), 2)


def test_zero_std_fraction_counts_groups_without_signal():
    rewards = torch.tensor([1.0, 1.0, 1.0, 2.0, NAN, 3.0, NAN, NAN])

    # (1, 1) flat; (1, 2) has spread; (nan, 3) one scored reward; (nan, nan) none scored
    assert zero_std_fraction(rewards, 2) == pytest.approx(3 / 4)


# ---- KL, surrogate ---------------------------------------------------------------------------------


def test_k3_is_zero_where_policy_equals_reference():
    logp = torch.tensor([[-0.5, -2.0, -7.0]])

    assert_close(kl_k3(logp, logp.clone()), torch.zeros(1, 3))


def test_k3_closed_form_and_positive_elsewhere():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-1.0, 0.0])

    kl = kl_k3(logp, ref)

    # d = ref - logp = -1, +1: exp(d) - d - 1
    assert_close(kl, torch.tensor([math.exp(-1.0), math.e - 2.0]))
    assert bool((kl > 0).all())


def test_k3_is_clamped():
    kl = kl_k3(torch.tensor([-100.0, 0.0]), torch.tensor([0.0, -100.0]))

    # d = +100 -> clamped to 20 -> exp(20) - 21 -> clamped to 10; d = -100 -> -20 -> exp(-20) + 19
    assert_close(kl, torch.tensor([10.0, 10.0]))
    kl_small = kl_k3(torch.tensor([0.0]), torch.tensor([-5.0]))
    assert_close(kl_small, torch.tensor([math.exp(-5.0) + 4.0]))


def test_clipped_surrogate_values_indicators_and_gradients():
    ratios = torch.tensor([[1.5, 0.5], [1.5, 0.5]])
    old = torch.zeros(2, 2)
    logp = ratios.log().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])

    loss, low, high = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    loss.sum().backward()

    # A>0: min(1.5, 1.2) = 1.2 (clipped high), min(0.5, 0.8) = 0.5
    # A<0: min(-1.5, -1.2) = -1.5, min(-0.5, -0.8) = -0.8 (clipped low)
    assert_close(loss.detach(), torch.tensor([[-1.2, -0.5], [1.5, 0.8]]))
    assert high.tolist() == [[True, False], [False, False]]
    assert low.tolist() == [[False, False], [False, True]]
    # clipped tokens get no gradient; the others d(-ratio * A)/dlogp = -ratio * A
    assert_close(logp.grad, torch.tensor([[0.0, -0.5], [1.5, 0.0]]))


def test_asymmetric_clip_uses_epsilon_high_above():
    logp = torch.log(torch.tensor([[1.25, 1.35]]))

    _, _, high = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.28)

    assert high.tolist() == [[False, True]]


# ---- aggregation -----------------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_grpo_aggregator_is_sequence_mean_then_batch_mean():
    assert_close(aggregate(PER_TOKEN, MASK, "grpo", 4), torch.tensor(((1 + 2) / 2 + 4 / 1) / 2))


def test_bnpo_aggregator_is_local_token_mean():
    assert_close(aggregate(PER_TOKEN, MASK, "bnpo", 4), torch.tensor((1 + 2 + 4) / 3))


def test_dr_grpo_aggregator_divides_by_rows_times_max_length():
    assert_close(aggregate(PER_TOKEN, MASK, "dr_grpo", 4), torch.tensor((1 + 2 + 4) / (2 * 4)))


def test_dapo_aggregator_divides_by_the_accumulated_token_count():
    assert_close(aggregate(PER_TOKEN, MASK, "dapo", 4), torch.tensor((1 + 2 + 4) / 3))
    assert_close(aggregate(PER_TOKEN, MASK, "dapo", 4, num_items_in_batch=14), torch.tensor(7 / 14))


@pytest.mark.parametrize("loss_type", list(LOSS_AGGREGATORS))
def test_padding_may_hold_anything(loss_type):
    dirty = PER_TOKEN.clone()
    dirty[0, 2] = float("inf")
    dirty[1, 1] = NAN

    assert_close(aggregate(dirty, MASK, loss_type, 4), aggregate(PER_TOKEN, MASK, loss_type, 4))


def test_an_empty_row_counts_as_zero_in_grpo():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])

    assert_close(aggregate(PER_TOKEN, mask, "grpo", 3), torch.tensor((1 + 2) / 2 / 2))


def test_unknown_loss_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match="supported: grpo, bnpo, dr_grpo, dapo"):
        aggregate(PER_TOKEN, MASK, "ppo", 4)
    with pytest.raises(ValueError, match="supported: grpo, bnpo, dr_grpo, dapo"):
        ops.accumulation_weight("ppo", 1, 2)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_weighted_micro_batches_add_up_to_the_whole_batch(loss_type):
    per_token = torch.arange(12, dtype=torch.float64).view(4, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    n_items = float(mask.sum())

    parts = sum(
        ops.accumulation_weight(loss_type, 2, 4) * aggregate(per_token[s : s + 2], mask[s : s + 2], loss_type, 3, n_items)
        for s in (0, 2)
    )

    assert_close(parts, aggregate(per_token, mask, loss_type, 3, n_items))


# ---- the whole loss against a plain loop -----------------------------------------------------------


def _loop_reference(logp, old, ref, adv, lengths, *, beta, eps_low, eps_high, loss_type, max_len, n_items):
    """The GRPO loss written token by token from the formulas, with Python floats."""
    seq_sums, seq_means, kls, clipped_lo, clipped_hi, tokens = [], [], [], 0, 0, 0
    for i, n in enumerate(lengths):
        a = float(adv[i])
        total = 0.0
        for t in range(n):
            lp, o, r = float(logp[i, t]), float(old[i, t]), float(ref[i, t])
            ratio = math.exp(lp - o)
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            surrogate = -min(ratio * a, clipped_ratio * a)
            d = r - lp
            kl = math.exp(d) - d - 1
            total += surrogate + beta * kl
            kls.append(kl)
            clipped_lo += ratio < 1 - eps_low and a < 0
            clipped_hi += ratio > 1 + eps_high and a > 0
            tokens += 1
        seq_sums.append(total)
        seq_means.append(total / max(n, 1))
    if loss_type == "grpo":
        loss = sum(seq_means) / len(lengths)
    elif loss_type == "bnpo":
        loss = sum(seq_sums) / tokens
    elif loss_type == "dr_grpo":
        loss = sum(seq_sums) / (len(lengths) * max_len)
    else:
        loss = sum(seq_sums) / (n_items if n_items is not None else tokens)
    return loss, sum(kls) / tokens, clipped_lo / tokens, clipped_hi / tokens


@pytest.mark.parametrize("loss_type", list(LOSS_AGGREGATORS))
@pytest.mark.parametrize("n_items", [None, 40.0])
def test_grpo_loss_matches_a_per_sequence_loop(loss_type, n_items):
    g = torch.Generator().manual_seed(3)
    b, t, max_len = 4, 5, 7
    lengths = [5, 2, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3  # some ratios leave the clip range
    logp[0, 0] = old[0, 0] + math.log(1.6)  # A > 0, above 1 + eps_high: clipped high
    logp[1, 1] = old[1, 1] + math.log(0.5)  # A < 0, below 1 - eps_low: clipped low
    ref = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.2
    adv = torch.tensor([1.3, -0.7, 0.0, -1.1], dtype=torch.float64)
    knobs = dict(beta=0.05, eps_low=0.2, eps_high=0.28, loss_type=loss_type, max_len=max_len, n_items=n_items)

    loss, stats = grpo_loss(
        logp, old, ref, adv, mask,
        beta=0.05, epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type,
        max_completion_length=max_len, num_items_in_batch=n_items,
    )
    want, kl, lo, hi = _loop_reference(logp, old, ref, adv, lengths, **knobs)

    assert_close(loss, torch.tensor(want, dtype=torch.float64))
    assert stats["kl"] == pytest.approx(kl)
    assert stats["clip_low"] == pytest.approx(lo)
    assert stats["clip_high"] == pytest.approx(hi)
    assert lo > 0 and hi > 0  # the example does exercise both clips


def test_grpo_loss_without_kl_term():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-3.0, -0.5]])
    kw = dict(epsilon_low=0.2, epsilon_high=0.2, loss_type="grpo", max_completion_length=2)

    no_beta, stats = grpo_loss(logp, old, ref, torch.tensor([1.0]), torch.ones(1, 2), beta=0.0, **kw)
    no_ref, stats_no_ref = grpo_loss(logp, old, None, torch.tensor([1.0]), torch.ones(1, 2), beta=0.5, **kw)

    # ratio 1 everywhere: loss = -A, the KL is reported but not added
    assert_close(no_beta, torch.tensor(-1.0))
    assert_close(no_ref, torch.tensor(-1.0))
    assert stats["kl"] > 0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert math.isnan(stats_no_ref["kl"])


def test_adaptive_beta_moves_towards_the_target_kl_within_the_clip():
    from services.orchestrator.grpo.ops import adaptive_beta

    assert adaptive_beta(0.1, kl=0.11, target_kl=0.1, horizon=10) == pytest.approx(0.1 * (1 + 0.1 / 10))
    assert adaptive_beta(0.1, kl=0.5, target_kl=0.1, horizon=10) == pytest.approx(0.1 * 1.02)  # clipped at +0.2
    assert adaptive_beta(0.1, kl=0.0, target_kl=0.1, horizon=10) == pytest.approx(0.1 * 0.98)  # clipped at -0.2
    assert adaptive_beta(0.1, kl=float("nan"), target_kl=0.1, horizon=10) == 0.1
