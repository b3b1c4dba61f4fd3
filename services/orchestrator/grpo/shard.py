"""How one step's rollouts are cut into micro-batches, per process, so the loss is the one-process loss.

Pure functions on lengths, no torch.distributed here. One process cuts the N completions of a step
into micro-batches of ``micro_batch_size`` rows (0: one micro-batch of all N) and sums
``weight * aggregate(micro)`` over them (see ``ops.accumulation_weight``). Under data parallelism,
rank r trains on a contiguous slice of rows; its micro-batches are the one-process micro-batches
intersected with its slice, so no micro-batch of rank r straddles a one-process boundary. Each piece
gets the weight that makes the sum over all ranks' pieces equal the one-process loss, per loss type:

- grpo, dr_grpo: means over sequences, so a piece of b rows out of N weighs b / N (as one process).
- dapo: every piece already divides by the whole batch's token count; weight 1 (as one process).
- bnpo: one process takes the token mean of each micro-batch k (T_k tokens, b_k rows) and weighs it
  b_k / N. A piece of k with t tokens takes its own token mean, so it weighs b_k / N * t / T_k.

The engines (DDP, FSDP2) average gradients over ranks; the trainer multiplies each rank's loss by the
world size to turn that average back into the sum these weights are made for.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.orchestrator.grpo.ops import accumulation_weight


@dataclass(frozen=True)
class MicroSlice:
    """Rows [start, end) of the step's batch, trained as one micro-batch with loss factor ``weight``."""

    start: int
    end: int
    weight: float

    @property
    def rows(self) -> int:
        return self.end - self.start


def rank_rows(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of rank ``rank`` out of ``n``: contiguous, sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if n < world_size:
        raise ValueError(f"{n} completions cannot be split over {world_size} processes (each needs one)")
    return n * rank // world_size, n * (rank + 1) // world_size


def micro_slices(
    lengths: Sequence[int], micro_batch_size: int, loss_type: str, world_size: int = 1, rank: int = 0
) -> list[MicroSlice]:
    """Micro-batches of rank ``rank`` over completions of token ``lengths`` [N], with their loss weights.

    With world_size 1 this is exactly the one-process cut and weighting (``ops.accumulation_weight``).
    """
    n = len(lengths)
    size = micro_batch_size or n
    lo, hi = rank_rows(n, world_size, rank)
    out = []
    for s in range(0, n, size):  # the one-process micro-batches
        e = min(s + size, n)
        a, b = max(s, lo), min(e, hi)
        if a >= b:
            continue
        if loss_type == "bnpo":
            whole, part = sum(lengths[s:e]), sum(lengths[a:b])
            # part / whole == 1.0 exactly when the piece is the whole micro-batch (one process).
            weight = accumulation_weight(loss_type, e - s, n) * (part / whole if whole else 1.0)
        else:
            weight = accumulation_weight(loss_type, b - a, n)
        out.append(MicroSlice(a, b, weight))
    return out


__all__ = ["MicroSlice", "micro_slices", "rank_rows"]
