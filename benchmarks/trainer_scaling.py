"""GRPO trainer step time, 1 process vs N processes (torchrun) on the same rollouts and global batch.

    python benchmarks/trainer_scaling.py [--quick] [--preset small] [--strategy fsdp|ddp] [--full]
                                         [--prompts 8] [--group-size 4] [--max-new-tokens 16] [--steps 5]
                                         [--nproc 2] [--device cpu|cuda]

The rollouts are sampled once from the initial policy and pickled; every mode replays them through
``services.orchestrator.grpo.replay`` in its own process(es), so all modes train on the same B*G
completions (the whole step's batch: each of N ranks trains 1/N of it):

- ``one``: 1 process with N torch threads (the same cores as the N-process run);
- ``one_1t``: 1 process with 1 thread (what one of the N ranks has);
- ``dist``: N processes (gloo on CPU, NCCL on GPU), 1 thread each on CPU.

Step time is the median wall time of rank 0's ``trainer.step`` after one warm-up step (a step of the
N-process run includes the broadcast of the rollouts from rank 0). The all-reduce share is measured in
extra profiled steps of the N-process run (torch.profiler on rank 0, the time the gloo or NCCL collectives ran:
FSDP's all-gathers and reduce-scatters, DDP's all-reduce, the stats all-reduce and the rollout
broadcast); it counts time *in* collectives, which includes waiting for the slower rank, and the
profiler slows the step, so it is a share, not an absolute.

What 2 CPU cores can show: that the N-process trainer runs, and what it costs on the same cores
(communication through gloo over loopback, a second Python process, smaller per-rank matrix products):
a ratio near or above 1. They cannot show a speed-up: the N processes share the cores the 1-process
run already used with N threads, and the machine is shared with other work. Scaling needs one device
per rank (``--device cuda`` under a multi-GPU host) or more cores than ranks x threads.
The last line is one JSON object with the headline figures.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from services.common.models.config import ModelConfig  # noqa: E402
from services.orchestrator.grpo.replay import ReplayJob, ReplaySpec  # noqa: E402


def sample_rollouts(policy: ModelConfig, prompts: int, group: int, max_new: int):
    """B prompts (half with an image) x G completions sampled from the initial policy."""
    from PIL import Image

    from services.common.models.factory import build_vlm
    from services.orchestrator.grpo import RolloutBatch, group_advantages

    vlm = build_vlm(policy)
    questions = [f"Question {i}: what is shown in the picture?" for i in range(prompts)]
    images = [Image.new("RGB", (64, 64), ((40 * i) % 256, 90, 200)) if i % 2 == 0 else None for i in range(prompts)]
    out = vlm.generate(questions, images, num_return_sequences=group, max_new_tokens=max_new, seed=1)
    flat = [g for grp in out for g in grp]
    rewards = torch.arange(len(flat), dtype=torch.float32).remainder(3.0)  # spread in every group
    return RolloutBatch(
        questions=[q for q in questions for _ in range(group)],
        images=[im for im in images for _ in range(group)],
        completion_ids=[g.token_ids for g in flat],
        old_logprobs=[g.logprobs for g in flat],
        advantages=group_advantages(rewards, group),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(spec: ReplaySpec, folder: Path, nproc: int, threads: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.model_copy(update={"torch_threads": threads}).model_dump_json())
    mod = ["-m", "services.orchestrator.grpo.replay", "--spec", str(folder / "spec.json"), "--out", str(folder)]
    cmd = [sys.executable, *mod] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *mod]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        sys.exit(f"replay with {nproc} process(es) failed:\n{proc.stderr[-4000:]}")


def _measured(folder: Path, job: str) -> list[dict]:
    steps = json.loads((folder / job / "stats.json").read_text())["steps"]
    return [s for s in steps if not s["warmup"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, 4 prompts x 4, 3 steps (well under a minute)")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--strategy", default="fsdp", choices=["fsdp", "ddp"])
    ap.add_argument("--full", action="store_true", help="train all weights instead of LoRA")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up step)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.quick:
        args.preset, args.prompts, args.group_size, args.steps = "tiny", 4, 4, 3
    n = args.nproc
    policy = ModelConfig(arch="qwen2_vl", preset=args.preset, seed=0)
    torch.set_num_threads(n)
    batch = sample_rollouts(policy, args.prompts, args.group_size, args.max_new_tokens)
    grpo = dict(group_size=args.group_size, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                loss_type="dapo", lora=not args.full, lr=1e-5)
    steps = args.steps + 1
    timed = ReplayJob(name="timed", grpo=grpo, strategy=args.strategy, steps=steps, warmup_steps=1)
    profiled = ReplayJob(name="profiled", grpo=grpo, strategy=args.strategy, steps=2, warmup_steps=1,
                         profile_comm=True)
    with tempfile.TemporaryDirectory(prefix="mor-scaling-") as tmp:
        d = Path(tmp)
        (d / "rollouts.pkl").write_bytes(pickle.dumps([batch]))
        spec = ReplaySpec(policy=policy, rollouts=d / "rollouts.pkl", jobs=[timed], device=args.device)
        cpu = args.device == "cpu"
        _launch(spec, d / "one", 1, n if cpu else 1)
        if cpu:
            _launch(spec, d / "one_1t", 1, 1)
        _launch(spec.model_copy(update={"jobs": [timed, profiled]}), d / "dist", n, 1)
        one = statistics.median(s["wall_s"] for s in _measured(d / "one", "timed"))
        one_1t = statistics.median(s["wall_s"] for s in _measured(d / "one_1t", "timed")) if cpu else float("nan")
        dist = statistics.median(s["wall_s"] for s in _measured(d / "dist", "timed"))
        prof = _measured(d / "dist", "profiled")
        comm_share = sum(s["comm_s"] for s in prof) / sum(s["wall_s"] for s in prof)
    tokens = sum(len(c) for c in batch.completion_ids)
    print(f"{args.preset} {args.strategy} {'full' if args.full else 'lora'}: {len(batch.completion_ids)} completions, "
          f"{tokens} tokens per step, {args.steps} measured steps on {args.device}")
    print(f"  1 process x {n if args.device == 'cpu' else 1} thread(s): {one:.3f} s/step")
    if args.device == "cpu":
        print(f"  1 process x 1 thread:   {one_1t:.3f} s/step")
    print(f"  {n} processes x 1 thread: {dist:.3f} s/step  (ratio {dist / one:.2f} of 1 process; "
          f"collectives {100 * comm_share:.0f}% of a profiled step)")
    print(json.dumps({
        "bench": "trainer_scaling", "preset": args.preset, "strategy": args.strategy, "lora": not args.full,
        "device": args.device, "nproc": n, "completions": len(batch.completion_ids), "tokens_per_step": tokens,
        "one_process_step_s": round(one, 4), "one_process_1thread_step_s": round(one_1t, 4),
        f"dist{n}_step_s": round(dist, 4), f"dist{n}_vs_one": round(dist / one, 3),
        f"dist{n}_vs_one_1thread": round(dist / one_1t, 3) if one_1t == one_1t else None,
        "allreduce_share": round(comm_share, 3), "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
