"""One long MoR run with held-out evaluations along the way (for a machine with a GPU or many cores).

    python experiments/long_run.py --out runs/long --device cuda --steps 300 --eval-every 50

Default world and small preset as in examples/local.yaml: world -> SFT start -> each client's RM
(trained on its own pairs) behind a real reward node on 127.0.0.1 -> MoRRun (policy sampled in
process on --device) -> greedy held-out evaluation of the policy every --eval-every steps, written to
<out>/evals.jsonl (step 0 is the SFT start). --quick: tiny world and model, a CPU smoke run.
World, SFT start and RMs are the pipeline's stages (services/pipeline/): a rerun into the same --out
reuses those built from the same inputs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from services.common.config import RewardNodeSettings, RunConfig, StackConfig, load_yaml  # noqa: E402
from services.common.data.world import load_world  # noqa: E402
from services.common.evaluation import evaluate_policy  # noqa: E402
from services.orchestrator.training_run import MoRRun  # noqa: E402
from services.pipeline.reward_models import ensure_rm, serve_nodes  # noqa: E402
from services.pipeline.sft import QUICK_POLICY, QUICK_SFT, ensure_sft  # noqa: E402
from services.pipeline.world import ensure_world, world_config  # noqa: E402


def summary(report: dict) -> dict:
    return {"exact_match": {b: round(r["exact_match"], 4) for b, r in report["benchmarks"].items()},
            "client_preference": {c: round(v, 4) for c, v in report["client_preference"].items()}}


async def train_and_watch(args: argparse.Namespace, stack: StackConfig, world_dir: Path, sft_dir: Path,
                          rms: dict[str, Path], log) -> None:
    world = load_world(world_dir)
    # the nodes share the machine with the policy: torch's default thread count, as a deployed node
    settings = [RewardNodeSettings.loopback(node, world.clients[node].rm_arch, ckpt, model={"torch_threads": None}) for node, ckpt in rms.items()]
    async with serve_nodes(settings) as endpoints:
        run_data = stack.run.model_dump(mode="json")
        run_data.update(world=str(world_dir), output_dir=str(args.out / "mor"), policy={"path": str(sft_dir)},
                        device=args.device, sampler=None,
                        nodes=list(endpoints.values()))
        run_data["grpo"].update(steps=args.steps, lr=args.lr, beta=args.beta, prompts_per_step=args.prompts,
                                group_size=args.group_size)
        run_data["router"]["kind"] = args.router
        cfg = RunConfig(**run_data)
        run = None

        def on_step(r):
            if r.step % 10 == 0:
                print(f"step {r.step}: reward {r.reward_mean:.3f} acc {r.accuracy_mean:.3f} kl {r.kl:.4f} "
                      f"tokens {r.completion_tokens_mean:.1f} {r.phases['total']:.2f}s", flush=True)
            if r.step % args.eval_every == 0 or r.step == args.steps:
                log(r.step, evaluate_policy(run.trainer.policy, world, per_benchmark=args.examples))

        run = MoRRun(cfg, on_step=on_step)
        await run.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "local.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--examples", type=int, default=200, help="held-out examples per benchmark")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--router", default="mor")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=True)
    stack = load_yaml(StackConfig, args.config)
    policy, sft = stack.policy, stack.sft
    if args.quick:
        policy = policy.model_copy(update=QUICK_POLICY)
        sft = sft.model_copy(update=QUICK_SFT)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = ensure_world(world_config(stack.world, quick=args.quick), args.out / "world", console)
    world_dir = world.root
    sft_dir = args.out / "policy-sft"
    report = ensure_sft(world, sft_dir, policy, sft, eval_examples=args.examples, console=console)
    evals = (args.out / "evals.jsonl").open("w")

    def log(step: int, rep: dict) -> None:
        line = {"step": step, "seconds": round(time.perf_counter() - t0, 1), **summary(rep)}
        evals.write(json.dumps(line) + "\n")
        evals.flush()
        print(json.dumps(line), flush=True)

    log(0, report["after"])
    rms = {}
    for node in world.training_clients():
        rms[node] = args.out / "rm" / node
        ensure_rm(RewardNodeSettings(
            node_id=node, data_dir=world_dir, model={"kind": world.clients[node].rm_arch, "checkpoint": rms[node],
                                                    "backbone": {"path": str(sft_dir)}},
            train=stack.rm_train.model_dump(), tls={"insecure": True}), world_dir, [node])
    print(f"world + SFT + RMs in {time.perf_counter() - t0:.0f}s", flush=True)
    asyncio.run(train_and_watch(args, stack, world_dir, sft_dir, rms, log))


if __name__ == "__main__":
    main()
