"""shard.micro_slices: the one-process micro-batches cut at rank boundaries, weighted so that the ranks'
losses add up to the one-process loss (closed form on hand-made lengths)."""
from __future__ import annotations

import pytest

from services.orchestrator.grpo.ops import LOSS_AGGREGATORS, accumulation_weight
from services.orchestrator.grpo.shard import micro_slices, rank_rows

LENGTHS = [6, 5, 4, 6, 5, 4, 6, 5, 4]  # 9 completions, 45 tokens


@pytest.mark.parametrize("loss_type", list(LOSS_AGGREGATORS))
@pytest.mark.parametrize("micro", [0, 2, 3, 4])
def test_one_process_is_the_trainers_old_cut_and_weights(loss_type, micro):
    got = micro_slices(LENGTHS, micro, loss_type)

    size = micro or len(LENGTHS)
    starts = list(range(0, len(LENGTHS), size))
    assert [(s.start, s.end) for s in got] == [(s, min(s + size, 9)) for s in starts]
    assert [s.weight for s in got] == [accumulation_weight(loss_type, s.rows, 9) for s in got]


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("micro", [0, 2, 3])
def test_ranks_cover_every_row_once_without_crossing_a_micro_batch(world, micro):
    pieces = [s for r in range(world) for s in micro_slices(LENGTHS, micro, "grpo", world, r)]

    rows = [i for s in pieces for i in range(s.start, s.end)]
    assert rows == list(range(9))
    size = micro or 9
    assert all(s.start // size == (s.end - 1) // size for s in pieces)


def test_bnpo_pieces_of_a_micro_batch_reweigh_its_token_mean():
    # micro-batch [3:6] (15 tokens, 3 rows) is cut at row 4 (2 ranks: rows [0:4] and [4:9])
    rank0 = micro_slices(LENGTHS, 3, "bnpo", 2, 0)
    rank1 = micro_slices(LENGTHS, 3, "bnpo", 2, 1)

    assert [(s.start, s.end) for s in rank0 + rank1] == [(0, 3), (3, 4), (4, 6), (6, 9)]
    assert [s.weight for s in rank0 + rank1] == pytest.approx([3 / 9, 3 / 9 * 6 / 15, 3 / 9 * 9 / 15, 3 / 9], abs=1e-15)
    # the two pieces of [3:6] together weigh what the whole micro-batch weighs in one process
    assert rank0[1].weight + rank1[0].weight == pytest.approx(3 / 9, abs=1e-15)


def test_sequence_means_weigh_rows_and_dapo_weighs_one():
    assert [s.weight for s in micro_slices(LENGTHS, 0, "grpo", 2, 1)] == [5 / 9]
    assert [s.weight for s in micro_slices(LENGTHS, 0, "dr_grpo", 2, 0)] == [4 / 9]
    assert [s.weight for s in micro_slices(LENGTHS, 3, "dapo", 2, 0)] == [1.0, 1.0]


def test_a_world_larger_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="cannot be split over 10 processes"):
        rank_rows(9, 10, 0)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        rank_rows(9, 2, 2)
