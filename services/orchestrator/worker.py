"""Ranks > 0 of a torchrun-launched orchestrator: trainer hosts that follow rank 0.

Rank 0 runs the MoR loop. Before it builds its trainer it announces the run (``announce_run``: the
RunConfig, broadcast); every other rank, waiting in ``serve_runs``, builds the same initial policy and a
``DistributedGRPOTrainer`` from it and takes part in the trainer's commands until rank 0 closes the
trainer; then it waits for the next run, until rank 0 calls ``release_workers``. The other ranks never
talk to the sampler, the reward nodes or a client: they only ever see rollouts.
"""
from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist

from services.common.config import ConfigError, RunConfig
from services.orchestrator.parallel import ParallelContext

log = logging.getLogger(__name__)

_RUN, _SHUTDOWN = "run", "shutdown"


def check_run(cfg: RunConfig, ctx: ParallelContext) -> None:
    """What a run needs to train in ``ctx.world_size`` processes (raised on rank 0 before announcing it)."""
    if cfg.device.split(":")[0] != ctx.device.type:
        raise ConfigError(f"device: {cfg.device}, but the trainer's processes run on {ctx.device.type}")
    n = cfg.grpo.prompts_per_step * cfg.grpo.group_size
    if n < ctx.world_size:
        raise ConfigError(f"grpo: a step of {n} completions cannot be split over {ctx.world_size} processes")
    if cfg.distributed.strategy == "fsdp" and not cfg.sampler_endpoints:
        # In-process sampling runs on rank 0 alone, but an FSDP model's forward gathers its
        # parameters from every rank: sampling would wait for ranks that are not sampling.
        raise ConfigError("distributed.strategy: fsdp needs a remote sampler (sampler: ...); "
                          "use strategy ddp to sample in process on rank 0")


def build_trainer(cfg: RunConfig, ctx: ParallelContext) -> Any:
    """The initial policy on this rank's device and the distributed trainer over it (on every rank alike)."""
    from services.common.models.factory import build_vlm
    from services.orchestrator.grpo.distributed import DistributedGRPOTrainer

    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    vlm = build_vlm(cfg.policy).to(ctx.device)
    return DistributedGRPOTrainer(vlm, cfg.grpo, ctx, cfg.distributed.strategy, seed=cfg.seed)


def announce_run(cfg: RunConfig) -> None:
    """Rank 0: the workers build their trainers for ``cfg`` (call it just before building rank 0's)."""
    # Without endpoints: the workers never call out, and tokens and key paths stay on rank 0.
    dist.broadcast_object_list([(_RUN, cfg.model_copy(update={"nodes": [], "sampler": None, "samplers": []}))], src=0)


def release_workers() -> None:
    """Rank 0: no more runs; the workers return from serve_runs."""
    dist.broadcast_object_list([(_SHUTDOWN, None)], src=0)


def serve_runs(ctx: ParallelContext) -> int:
    """Ranks > 0: host one trainer per run rank 0 announces, until released; returns the runs served."""
    runs = 0
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        kind, payload = box[0]
        if kind == _SHUTDOWN:
            return runs
        trainer = build_trainer(payload, ctx)
        commands = trainer.serve()
        log.info("rank %d: run finished after %d trainer commands", ctx.rank, commands)
        del trainer
        runs += 1


__all__ = ["announce_run", "build_trainer", "check_run", "release_workers", "serve_runs"]
