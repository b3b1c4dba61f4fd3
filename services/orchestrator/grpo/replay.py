"""Replay fixed rollouts through the GRPO trainer in any world size: the 1-vs-N check and the benchmark.

    python -m services.orchestrator.grpo.replay --spec spec.json --out DIR                    # one process
    torchrun --nproc-per-node 2 -m services.orchestrator.grpo.replay --spec spec.json --out DIR

The spec (``ReplaySpec``, JSON) names the initial policy, a file of pickled ``RolloutBatch``es and a
list of jobs; each job builds a fresh trainer (``GRPOTrainer`` in one process, ``DistributedGRPOTrainer``
under torchrun), optionally loads a trainer state, trains ``steps`` steps on the batches in turn and
writes, from rank 0, ``DIR/<job>/params.pt`` (the trained parameters, full), ``state-<k>.pt`` after
the steps listed in ``save_after`` (the checkpoint layout: loadable into any world size) and
``stats.json`` (per-step TrainStats). No sampler, no nodes: the same rollouts go in whatever the world.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from services.common.config.base import Section
from services.common.config.run import GRPOSection
from services.common.models.config import ModelConfig


class ReplayJob(Section):
    """One trainer, trained on the spec's rollouts."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="Folder of this job's outputs.")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="Trainer settings.")
    strategy: Literal["fsdp", "ddp"] = Field("fsdp", description="Engine under torchrun (ignored in one process).")
    steps: int = Field(3, ge=1, description="Steps to train (batch i of the rollouts file at step i, cycling).")
    resume_from: Path | None = Field(None, description="A state-<k>.pt to load first (written by any world size).")
    save_after: list[int] = Field(default_factory=list, description="Write state-<k>.pt after these steps.")
    seed: int = Field(0, description="Trainer seed (LoRA init).")
    warmup_steps: int = Field(0, ge=0, description="Steps marked warm-up in stats.json (the benchmark drops them); counted in steps.")
    profile_comm: bool = Field(False, description="Time the collectives of each step after the warm-up with torch.profiler (slows the step).")


class ReplaySpec(Section):
    policy: ModelConfig = Field(default_factory=ModelConfig, description="Initial policy, the same on every rank.")
    rollouts: Path = Field(..., description="Pickled list of RolloutBatch (the whole step's batch each).")
    jobs: list[ReplayJob] = Field(..., min_length=1, description="Trainers to run, in order.")
    torch_threads: int | None = Field(1, ge=1, description="torch intra-op threads per process.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda)$", description="cpu, or cuda (under torchrun: cuda:LOCAL_RANK; NCCL).")


def _comm_seconds(prof: Any) -> float:
    """Seconds the profiled collectives ran: the backend's own events (``gloo:all_reduce``,
    ``nccl:...``), not the ``c10d::`` dispatch events that enqueue them (counting both would count twice)."""
    events = prof.key_averages()
    total = sum(e.cpu_time_total for e in events if e.key.startswith(("gloo:", "nccl:")))
    if not total:
        total = sum(e.cpu_time_total for e in events if e.key.startswith("c10d::"))
    return total / 1e6


def run_job(spec: ReplaySpec, job: ReplayJob, batches: list[Any], out: Path, ctx: Any = None) -> dict[str, Any]:
    """Train one job; returns (on rank 0) its per-step stats and writes its outputs under ``out``."""
    from services.common.models.factory import build_vlm
    from services.orchestrator.grpo.trainer import GRPOTrainer

    vlm = build_vlm(spec.policy).to(ctx.device if ctx is not None else spec.device)
    if ctx is None:
        trainer = GRPOTrainer(vlm, job.grpo, seed=job.seed)
    else:
        from services.orchestrator.grpo.distributed import DistributedGRPOTrainer

        trainer = DistributedGRPOTrainer(vlm, job.grpo, ctx, job.strategy, seed=job.seed)
    main = ctx is None or ctx.is_main
    folder = out / job.name
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    if not main:
        trainer.serve()
        return {}
    try:
        if job.resume_from is not None:
            trainer.load_state_dict(torch.load(job.resume_from, weights_only=False))
        steps = []
        for i in range(trainer.steps_done, job.steps):
            profile = job.profile_comm and i >= job.warmup_steps
            if profile:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                    t0 = time.perf_counter()
                    stats = trainer.step(batches[i % len(batches)])
                    wall = time.perf_counter() - t0
                comm = _comm_seconds(prof)
            else:
                t0 = time.perf_counter()
                stats = trainer.step(batches[i % len(batches)])
                wall, comm = time.perf_counter() - t0, float("nan")
            steps.append({"step": i + 1, "wall_s": wall, "comm_s": comm, "warmup": i < job.warmup_steps,
                          **dataclasses.asdict(stats)})
            if i + 1 in job.save_after:
                torch.save(trainer.state_dict(), folder / f"state-{i + 1}.pt")
        state = trainer.state_dict()
        torch.save(state["params"], folder / "params.pt")
        (folder / "stats.json").write_text(json.dumps(
            {"world_size": ctx.world_size if ctx is not None else 1, "steps": steps}, indent=2))
        return {"steps": steps}
    finally:
        if ctx is not None:
            trainer.close()


def main(argv: list[str] | None = None) -> None:
    from services.orchestrator import parallel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    spec = ReplaySpec.model_validate_json(args.spec.read_text())
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    ctx = parallel.init_from_env(spec.device)
    try:
        # Only rank 0 needs the rollouts (a step command carries them to the others); every rank
        # reading the file would also work, but rank 0 alone is what a real run does.
        batches = pickle.loads(spec.rollouts.read_bytes()) if ctx is None or ctx.is_main else []
        for job in spec.jobs:
            run_job(spec, job, batches, args.out, ctx)
    finally:
        parallel.shutdown()


if __name__ == "__main__":
    main()
