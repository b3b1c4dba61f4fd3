"""fusion/ops.py on tiny hand-made tensors with exact expected values."""
from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from services.orchestrator.fusion import ops

NAN = float("nan")
T, F = True, False


def test_masked_softmax_is_exactly_zero_on_unavailable_entries() -> None:
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [1.0, 2.0, 3.0]])

    w = ops.masked_softmax(logits, torch.tensor([T, T, F]))

    assert_close(w, torch.tensor([[0.25, 0.75, 0.0], [1 / (1 + math.e), math.e / (1 + math.e), 0.0]]))
    assert (w[:, 2] == 0).all()


def test_masked_softmax_takes_per_row_availability_and_zeroes_empty_rows() -> None:
    w = ops.masked_softmax(torch.zeros(3, 2), torch.tensor([[T, T], [F, T], [F, F]]))

    assert_close(w, torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]]))


def test_renormalise_over_the_mask() -> None:
    w = torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    mask = torch.tensor([[T, F, T], [T, F, T], [F, F, F]])

    assert_close(ops.renormalise(w, mask), torch.tensor([[2 / 7, 0.0, 5 / 7], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_weighted_average_masks_missing_nodes_and_renormalises() -> None:
    # 2 nodes, 3 responses: node 1 missed response 1 (NaN), nobody scored response 2
    z = torch.tensor([[1.0, 2.0, NAN], [3.0, NAN, NAN]])
    mask = torch.tensor([[T, T, F], [T, F, F]])
    w = torch.tensor([[0.25, 0.75]] * 3)

    r, w_eff = ops.weighted_average(z, mask, w)

    assert_close(r[:2], torch.tensor([0.25 * 1 + 0.75 * 3, 2.0]))  # not 0.25 * 2 + 0.75 * 0
    assert torch.isnan(r[2])
    assert_close(w_eff, torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.0, 0.0]]))


def test_masked_extreme_min_and_max_with_missing_nodes() -> None:
    z = torch.tensor([[1.0, 5.0, NAN, 2.0], [3.0, NAN, NAN, 2.0], [-1.0, 4.0, NAN, 9.0]])
    mask = torch.tensor([[T, T, F, T], [T, F, F, T], [F, T, F, T]])

    lo, lo_i = ops.masked_extreme(z, mask, largest=False)
    hi, hi_i = ops.masked_extreme(z, mask, largest=True)

    assert_close(lo, torch.tensor([1.0, 4.0, NAN, 2.0]), equal_nan=True)
    assert lo_i.tolist() == [0, 2, -1, 0]  # the masked -1 of node 2 is ignored; ties: lowest index
    assert_close(hi, torch.tensor([3.0, 5.0, NAN, 9.0]), equal_nan=True)
    assert hi_i.tolist() == [1, 0, -1, 2]


def test_one_hot_rows_and_per_prompt_mean() -> None:
    rows = ops.one_hot_rows(torch.tensor([0, 1, 1, -1, 2]), 3)
    prompt_index = torch.tensor([0, 0, 0, 1, 1])

    share = ops.per_prompt_mean(rows, prompt_index, 3)

    assert rows.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    # prompt 1's unscored response does not count; prompt 2 has no responses at all
    assert_close(share, torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_pair_margin_ignores_masked_nodes_even_when_nan() -> None:
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    zc = torch.tensor([[2.0, 1.0], [0.0, NAN]])
    zr = torch.tensor([[1.0, 3.0], [1.0, NAN]])
    mask = torch.tensor([[T, T], [T, F]])

    assert_close(ops.pair_margin(w, zc, zr, mask), torch.tensor([0.5 * 1 + 0.5 * -1, -2.0]))
