"""Reward-node throughput: the light RM scored in process in batches vs through the gRPC server.

    python benchmarks/reward_node.py [--quick] [--threads 1] [--group-size 4] [--checkpoint DIR]

(a) in process: ``model.score_batch`` over batches of ``--batch-size`` samples (images already
    decoded), one after another: the ceiling a server can reach.
(b) gRPC: the same samples as Score requests (one group of ``--group-size`` answers each) from
    1, 8 and 32 concurrent callers through a real server on loopback (plaintext, no auth), with
    dynamic batching (max batch ``--batch-size``, max wait ``--max-wait-ms``).
Both run in this process, with the same torch thread count, interleaved round by round (so\ndrifting load from other processes hits every mode alike). Samples are answers:
samples/s counts scored responses. Latency is per batch for (a) and per request for (b).
The last line printed is one JSON object with the figures and the ratios (b)/(a).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.common.config import RewardNodeSettings  # noqa: E402
from services.reward_node.app import build_app  # noqa: E402
from services.reward_node.checkpoint import LoadedRM, load_checkpoint  # noqa: E402
from services.reward_node.client import RewardNodeClient  # noqa: E402
from services.reward_node.rm import LightRM  # noqa: E402

QUESTIONS = ("How many shapes are there?", "Which bar is the tallest?", "What digit is shown?",
             "What colour is the circle?", "Is the digit even or odd?", "What is the value of bar B?")
ANSWERS = ("three", "3", "3 because there are three shapes in the picture", "B", "B because bar B is the highest",
           "seven", "odd", "red because the circle is painted red", "yes", "9, which is my final answer after a while")


def workload(n_groups: int, group_size: int, seed: int = 0) -> list[tuple[str, bytes, list[str]]]:
    """Groups of (prompt, PNG bytes, answers): 64x64 noise images, varied texts."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n_groups):
        arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        answers = [f"{ANSWERS[int(rng.integers(len(ANSWERS)))]} ({g}.{j})" for j in range(group_size)]
        out.append((f"{QUESTIONS[g % len(QUESTIONS)]} [{g}]", buf.getvalue(), answers))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _summary(n_samples: int, wall: float, lat: list[float]) -> dict:
    return {"samples": n_samples, "wall_s": wall, "lat": lat}


def bench_inprocess(model: LightRM, groups: list, batch_size: int) -> dict:
    images = [Image.open(io.BytesIO(png)).convert("RGB") for _, png, _ in groups]
    samples = [(p, images[i], r) for i, (p, _, rs) in enumerate(groups) for r in rs]
    lat = []
    t0 = time.perf_counter()
    for s in range(0, len(samples), batch_size):
        chunk = samples[s : s + batch_size]
        t1 = time.perf_counter()
        model.score_batch([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk])
        lat.append(time.perf_counter() - t1)
    return _summary(len(samples), time.perf_counter() - t0, lat)


async def bench_grpc(client: RewardNodeClient, groups: list, concurrency: int) -> dict:
    queue = list(reversed(groups))
    lat: list[float] = []

    async def caller() -> None:
        while queue:
            prompt, png, answers = queue.pop()
            t1 = time.perf_counter()
            await client.score(prompt, answers, png, timeout=120)
            lat.append(time.perf_counter() - t1)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return _summary(sum(len(rs) for _, _, rs in groups), time.perf_counter() - t0, lat)


def _merge(parts: list[dict]) -> dict:
    """Rounds of one mode -> samples/s over all rounds, latency percentiles over all calls."""
    samples = sum(p["samples"] for p in parts)
    wall = sum(p["wall_s"] for p in parts)
    lat = [x for p in parts for x in p["lat"]]
    per_round = [p["samples"] / p["wall_s"] for p in parts]
    return {"samples_per_s": samples / wall, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "per_round": per_round}


async def run(args: argparse.Namespace, loaded: LoadedRM) -> dict:
    """Every round measures every mode on fresh groups, interleaved, so drifting machine load
    (other processes on a shared box) hits all modes alike."""
    settings = RewardNodeSettings(
        node_id="bench",
        model={"kind": "light", "torch_threads": args.threads},
        tls={"insecure": True},
        metrics={"enabled": False},
        batching={"max_batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms, "max_queue": 4096},
    )
    modes = ["inprocess", *(f"grpc_c{c}" for c in args.concurrency)]
    raw: dict[str, list[dict]] = {m: [] for m in modes}
    app = build_app(settings, loaded=loaded)
    port = await app.start()
    try:
        async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=0) as client:
            warm = workload(8, args.group_size, seed=10_000)
            bench_inprocess(loaded.model, warm, args.batch_size)
            for prompt, png, answers in warm:
                await client.score(prompt, answers, png, timeout=60)
            for r in range(args.rounds):
                groups = workload(args.groups, args.group_size, seed=r)
                raw["inprocess"].append(bench_inprocess(loaded.model, groups, args.batch_size))
                for c in args.concurrency:
                    raw[f"grpc_c{c}"].append(await bench_grpc(client, groups, c))
    finally:
        await app.stop(grace=1.0)
    return {m: _merge(v) for m, v in raw.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer groups (well under a minute on 2 cores).")
    ap.add_argument("--groups", type=int, default=None, help="Groups per mode and round (default 128, quick 48).")
    ap.add_argument("--rounds", type=int, default=None, help="Interleaved rounds over all modes (default 4, quick 2).")
    ap.add_argument("--group-size", type=int, default=4, help="Answers per Score request.")
    ap.add_argument("--batch-size", type=int, default=32, help="Samples per forward pass (both sides).")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="Server dynamic-batching max wait.")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides).")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="Concurrent callers.")
    ap.add_argument("--checkpoint", type=Path, default=None, help="A trained light RM; default a random-init one.")
    args = ap.parse_args()
    if args.groups is None:
        args.groups = 48 if args.quick else 128
    if args.rounds is None:
        args.rounds = 2 if args.quick else 4
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        loaded = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        loaded = LoadedRM(LightRM().eval(), {"model_version": "light-bench", "kind": "light"}, None)

    results = asyncio.run(run(args, loaded))
    base = results["inprocess"]["samples_per_s"]
    print(f"{'mode':<12}{'samples/s':>12}{'p50 ms':>10}{'p99 ms':>10}  per round")
    for name, r in results.items():
        rounds = " ".join(f"{x:.1f}" for x in r["per_round"])
        print(f"{name:<12}{r['samples_per_s']:>12.1f}{r['p50_s'] * 1e3:>10.1f}{r['p99_s'] * 1e3:>10.1f}  {rounds}")
    headline = {
        "bench": "reward_node",
        "rm": "light",
        "threads": args.threads,
        "group_size": args.group_size,
        "batch_size": args.batch_size,
        "samples_per_mode": args.rounds * args.groups * args.group_size,
        "rounds": args.rounds,
        "inprocess_samples_per_s": round(base, 2),
        **{f"{k}_samples_per_s": round(v["samples_per_s"], 2) for k, v in results.items() if k != "inprocess"},
        **{f"{k}_p50_ms": round(v["p50_s"] * 1e3, 2) for k, v in results.items()},
        **{f"{k}_p99_ms": round(v["p99_s"] * 1e3, 2) for k, v in results.items()},
        **{f"grpc_vs_inprocess_c{c}": round(results[f"grpc_c{c}"]["samples_per_s"] / base, 3) for c in args.concurrency},
    }
    print(json.dumps(headline, sort_keys=True))


if __name__ == "__main__":
    main()
