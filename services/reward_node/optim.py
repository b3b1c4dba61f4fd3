"""The one optimisation loop of a node's RM training stages (grounding, Bradley-Terry).

AdamW over the model's trainable parameters, a learning-rate schedule given as a factor of the step
and the total, seeded batch order, gradient clipping; the caller supplies the loss of one batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from services.reward_node.rm import RewardModel


def train_loop(
    model: RewardModel,
    batch_loss: Callable[[list[int]], torch.Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    schedule: Callable[[int, int], float],
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """``epochs`` passes over items 0..n-1 in seeded random batches; mean loss per epoch."""
    params = model.trainable_parameters()
    if not params:
        raise ValueError("the reward model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, total))
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        losses = []
        for s in range(0, n, batch_size):
            loss = batch_loss(order[s : s + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
        history.append(sum(losses) / len(losses))
    model.eval()
    return history


__all__ = ["train_loop"]
