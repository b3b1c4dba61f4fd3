"""The driver of `python experiments/mor_table.py --profile quick|full --out DIR`.

    plan     the jobs of a profile: main table (methods x seeds), generalisation, robustness
             (noise levels), adaptability (the uncovered benchmark's expert joins mid-run, and a control run)
    prepare  worlds, the SFT start, every reward model the jobs need (cached under --work)
    run      every job (jobs.run_job), in worker processes when --workers > 1
    report   results.json, results.md and the PNG plots in --out

Each step is cached under the pipeline's one rule (services/pipeline/cache.py), so an interrupted
table resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

# Spinning OpenMP threads make torch many times slower on a shared 2-core machine (see services/cli/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from services.common.data.world import load_world  # noqa: E402
from services.pipeline.table.jobs import JobInputs, RunJob, run_job  # noqa: E402
from services.pipeline.table.prepare import (  # noqa: E402
    RMSpec,
    Workspace,
    client_kind,
    home_expert,
    noise_name,
    prepare_rm,
    prepare_sft,
    prepare_worlds,
    rm_dir,
    rm_specs_for,
)
from services.pipeline.table.profiles import Profile, method, profile  # noqa: E402
from services.pipeline.table.report import write_report  # noqa: E402


def plan(p: Profile, joiner: str | None) -> list[RunJob]:
    """Every job of the profile, adaptability first (the longest), without duplicates. The adaptability
    runs are in the generalisation world, where ``joiner`` (the uncovered benchmark's expert) joins."""
    c, steps = p.claims, int(p.grpo["steps"])
    jobs: list[RunJob] = []
    if joiner is not None:
        for s in c.adapt_seeds:
            jobs.append(RunJob("adapt", "general", "mor", s, c.adapt_steps, track=True, join=joiner))
            jobs.append(RunJob("adapt_control", "general", "mor", s, c.adapt_steps, track=True))
    jobs += [RunJob("main", method(m).world, m, s, steps) for m in p.methods for s in p.seeds]
    # Robustness at 0% noise is the main world: make sure those rows exist.
    jobs += [RunJob("main", "main", m, s, steps) for m in c.noise_methods for s in c.noise_seeds]
    jobs += [RunJob("general", "general", m, s, steps) for m in c.gen_methods for s in c.gen_seeds]
    for share in c.noise_levels:
        jobs += [RunJob(noise_name(share), noise_name(share), m, s, steps) for m in c.noise_methods for s in c.noise_seeds]
    seen: set[str] = set()
    return [j for j in jobs if not (j.key in seen or seen.add(j.key))]


Planned = tuple[RunJob, list[RMSpec], "RMSpec | None"]


def inputs_for(p: Profile, ws: Workspace, jobs: Sequence[RunJob]) -> tuple[list[Planned], list[RMSpec]]:
    """Each job with the reward models it serves (and its joiner), and the distinct models to train."""
    out: list[Planned] = []
    wanted: dict[RMSpec, None] = {}
    for job in jobs:
        seed = p.rm_seed_for(job.seed)
        specs = rm_specs_for(p, ws, job.world, method(job.method).rms, seed)
        joiner = None
        if job.join:
            joiner = RMSpec(job.join, "main", client_kind(p, ws.world_dir("main"), job.join), "client", (job.join,), seed)
        for s in [*specs, *([joiner] if joiner else [])]:
            wanted.setdefault(s, None)
        out.append((job, specs, joiner))
    return out, list(wanted)


def _pool_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
              done: Callable[[Any, Any], None]) -> list[Any]:
    """fn over items, in order of items; in worker processes (spawned, one torch thread each) when workers > 1."""
    if workers <= 1 or len(items) <= 1:
        results = []
        for it in items:
            results.append(fn(it))
            done(it, results[-1])
        return results
    import multiprocessing

    out: list[Any] = [None] * len(items)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, it): i for i, it in enumerate(items)}
        for fut in as_completed(futures):
            i = futures[fut]
            out[i] = fut.result()
            done(items[i], out[i])
    return out


def _train_rm(args: tuple[Profile, Workspace, RMSpec]) -> tuple[str, float]:
    torch.set_num_threads(1)
    path, acc = prepare_rm(*args)
    return str(path), acc


def adapt_joiner(p: Profile) -> str | None:
    """The node that joins the adaptability runs: the expert of the benchmark the generalisation world
    leaves uncovered (None when no client's home is that benchmark: no adaptability jobs)."""
    expert = home_expert(p.world, p.claims.gen_benchmark)
    return expert.name if expert is not None else None


def run_jobs(p: Profile, ws: Workspace, jobs: Sequence[RunJob], workers: int, console: Console,
             timing: dict[str, float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train (or reuse) every reward model the jobs serve, then run (or reuse) the jobs; returns each
    job's result, in order, and the reward models' table. Adds "reward_models" and "runs" to timing."""
    t0 = t = time.perf_counter()
    planned, specs = inputs_for(p, ws, jobs)
    # Specs with the same checkpoint folder (same data, settings and seed) are trained once.
    by_dir: dict[Path, RMSpec] = {}
    for s in specs:
        by_dir.setdefault(rm_dir(p, ws, s), s)
    console.print(f"[green]reward models[/] {len(by_dir)} to train or reuse")
    trained = _pool_map(_train_rm, [(p, ws, s) for s in by_dir.values()], workers,
                        lambda a, r: console.print(f"  {a[2].node_id} ({a[2].kind}, {a[2].world}, seed {a[2].seed}): "
                                                   f"held-out pair accuracy {r[1]:.3f}", highlight=False))
    done_dirs = dict(zip(by_dir, trained, strict=True))
    ckpt = {s: done_dirs[rm_dir(p, ws, s)] for s in specs}
    timing["reward_models"] = time.perf_counter() - t

    items = [JobInputs(job, p, ws, tuple((s, ckpt[s][0]) for s in nodes),
                       (joiner, ckpt[joiner][0]) if joiner else None,
                       {s.node_id: ckpt[s][1] for s in [*nodes, *([joiner] if joiner else [])]})
             for job, nodes, joiner in planned]
    console.print(f"[green]runs[/] {len(items)} jobs, {workers} worker(s)")
    t = time.perf_counter()
    finished = [0]

    def done(it: JobInputs, r: dict[str, Any]) -> None:
        finished[0] += 1
        ev = r["eval"]["benchmarks"]
        acc = sum(x["vqa_accuracy"] for x in ev.values()) / len(ev)
        console.print(f"  [{finished[0]}/{len(items)}] {it.job.key}: {r['seconds']:.0f}s, mean VQA acc {acc:.3f}, "
                      f"{time.perf_counter() - t0:.0f}s elapsed", highlight=False)

    results = _pool_map(run_job, items, workers, done)
    timing["runs"] = time.perf_counter() - t
    rm_table = [{"node_id": s.node_id, "world": s.world, "kind": s.kind, "source": s.source, "seed": s.seed,
                 "held_out_accuracy": ckpt[s][1]} for s in specs]
    return results, rm_table


def run_table(p: Profile, out: Path, work: Path, *, workers: int | None = None,
              console: Console | None = None, command: str | None = None) -> dict[str, Any]:
    """Prepare, run and report a profile; returns the results dict written to out/results.json."""
    torch.set_num_threads(1)
    logging.getLogger("services.common.grpc").setLevel(logging.ERROR)  # loopback plaintext is the point here
    console = console or Console(stderr=True)
    workers = p.workers if workers is None else workers
    ws = Workspace(work)
    timing: dict[str, float] = {}
    t0 = t = time.perf_counter()
    prepare_worlds(p, ws, console)
    timing["worlds"] = time.perf_counter() - t
    t = time.perf_counter()
    sft_report = prepare_sft(p, ws, console)
    timing["sft"] = time.perf_counter() - t

    main_world = load_world(ws.world_dir("main"))
    held_out = p.world.held_out_client.name if p.world.held_out_client is not None else None
    joiner = adapt_joiner(p)
    results, rm_table = run_jobs(p, ws, plan(p, joiner), workers, console, timing)
    context = {
        "profile": p.describe(), "command": command, "sft": {k: sft_report.get(k) for k in ("seconds", "final_loss")},
        "training_clients": main_world.training_clients(), "held_out_client": held_out, "adapt_client": joiner,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "workers": workers},
        "reward_models": rm_table,
        # Jobs found finished in --work are not run again: say so, with the compute they took when they ran.
        "jobs": {"total": len(results), "reused": sum(bool(r.get("cached")) for r in results),
                 "compute_seconds": sum(r["seconds"] for r in results)},
    }
    timing["total_before_report"] = time.perf_counter() - t0
    jobs_by_key = {r["key"]: {k: v for k, v in r.items() if k != "cached"} for r in results}
    return write_report(p, jobs_by_key, context, timing, out, ws, console)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MoR against its baselines on the synthetic federated world.")
    parser.add_argument("--profile", choices=["quick", "full"], default="quick", help="What to run (see profiles.py).")
    parser.add_argument("--out", type=Path, required=True, help="Folder for results.json, results.md and the PNGs.")
    parser.add_argument("--work", type=Path, default=None,
                        help="Folder for worlds, checkpoints and runs (cached); default runs/experiments/<profile>.")
    parser.add_argument("--workers", type=int, default=None, help="Jobs run at once, one process each (default: the profile's).")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1 (got {args.workers})")
    p = profile(args.profile)
    command = "python experiments/mor_table.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    results = run_table(p, args.out, args.work or Path("runs/experiments") / p.name, workers=args.workers,
                        command=command)
    print(json.dumps({"profile": p.name, "out": str(args.out), "seconds": round(results["timing"]["total"], 1)}))
    return 0


__all__ = ["adapt_joiner", "inputs_for", "main", "plan", "run_jobs", "run_table"]
