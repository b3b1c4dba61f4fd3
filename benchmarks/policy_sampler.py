"""Policy-sampler throughput (service vs backend in process) and weight-update latency.

    python benchmarks/policy_sampler.py [--quick] [--preset small] [--threads 1] [--prompts 8] [--group-size 4]

(a) in process: `HFBackend.generate` on B prompts x G completions, awaited directly;
(b) gRPC: the same requests (same seeds, so the same tokens) as Generate calls through a real
    sampler on loopback (plaintext, no auth) serving that very backend object.
Rounds alternate (a) and (b), so drifting load from other processes hits both alike; tokens/s
counts generated completion tokens. Then LoRA adapters (rank --lora-rank on the language model's
attention projections) are pushed with increasing versions through UpdateWeights and the client-side
wall time of each push is measured (receive + sha256 + validation + waiting for in-flight + swap),
plus one full-weights push for comparison. Half the adapter pushes keep the adapter layout (an
in-place copy), half alternate ranks (a new adapter each time).
The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.common.config import EndpointSection, SamplerSettings, TLSSection  # noqa: E402
from services.common.models import ModelConfig, build_vlm  # noqa: E402
from services.policy_sampler.app import SamplerApp  # noqa: E402
from services.policy_sampler.backends.hf import HFBackend  # noqa: E402
from services.policy_sampler.client import SamplerClient, SamplerPrompt  # noqa: E402
from services.policy_sampler.requests import PromptInput, SamplingOptions  # noqa: E402

QUESTIONS = ("How many shapes are there?", "Which bar is the tallest?", "What digit is shown?",
             "What colour is the circle?", "Describe the picture.", "What is the value of bar B?")
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def workload(n: int, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """(prompt id, question, 64x64 noise image) triples."""
    rng = np.random.default_rng(seed)
    return [(f"p{i}", f"{QUESTIONS[i % len(QUESTIONS)]} [{i}]",
             Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))) for i in range(n)]


def lora_model(base_cfg: ModelConfig, rank: int, seed: int):
    """A peft policy of the served architecture whose adapter is random (a "trained" one)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_vlm(base_cfg).model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


async def run(args: argparse.Namespace) -> dict:
    model_cfg = ModelConfig(arch=args.arch, preset=args.preset, seed=0)
    settings = SamplerSettings(
        model=model_cfg, tls=TLSSection(insecure=True), metrics={"enabled": False},
        server={"host": "127.0.0.1", "port": 0}, max_new_tokens=args.max_new_tokens,
        max_prompts=max(64, args.prompts), hf={"torch_threads": args.threads},
    )
    backend = HFBackend(settings.model, settings.hf)
    items = workload(args.prompts)
    inputs = [PromptInput(pid, q, im) for pid, q, im in items]
    prompts = [SamplerPrompt(pid, q, im) for pid, q, im in items]
    log = {"inprocess": [], "grpc": []}  # (tokens, seconds) per round

    async with SamplerApp(settings, backend) as app:
        endpoint = EndpointSection(address=f"127.0.0.1:{app.port}", tls=TLSSection(insecure=True), timeout_s=600)
        async with SamplerClient(endpoint, retries=0) as client:
            async def inprocess(seed: int) -> int:
                sampling = SamplingOptions(1.0, 1.0, 0, args.max_new_tokens, seed)
                groups = await backend.generate(inputs, args.group_size, sampling)
                return sum(len(s.token_ids) for g in groups for s in g)

            async def grpc(seed: int) -> int:
                out = await client.generate(prompts, args.group_size, temperature=1.0, seed=seed,
                                            max_new_tokens=args.max_new_tokens)
                return sum(len(s.token_ids) for g in out.groups for s in g)

            await inprocess(999)  # warm-up: first-call allocations, lazy imports
            await grpc(999)
            for r in range(args.rounds):
                for name, fn in (("inprocess", inprocess), ("grpc", grpc)) if r % 2 == 0 else (
                        ("grpc", grpc), ("inprocess", inprocess)):
                    t0 = time.perf_counter()
                    tokens = await fn(r)
                    log[name].append((tokens, time.perf_counter() - t0))

            lora_times, sizes = [], []
            for i in range(args.updates):
                rank = args.lora_rank if i % 2 == 0 or i < args.updates // 2 else max(1, args.lora_rank // 2)
                model = lora_model(model_cfg, rank, seed=i)
                t0 = time.perf_counter()
                pushed = await client.push_peft_model(i + 1, model)
                lora_times.append(time.perf_counter() - t0)
                sizes.append(pushed.bytes_received)
            full = build_vlm(model_cfg.model_copy(update={"seed": 7})).model
            t0 = time.perf_counter()
            pushed_full = await client.push_full_model(args.updates + 1, full)
            full_s = time.perf_counter() - t0

    rate = {k: sum(t for t, _ in v) / sum(s for _, s in v) for k, v in log.items()}
    n_params = sum(p.numel() for p in full.parameters())
    return {
        "bench": "policy_sampler",
        "backend": "hf",
        "device": "cpu",
        "preset": args.preset,
        "arch": args.arch,
        "params_m": round(n_params / 1e6, 3),
        "torch_threads": args.threads,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "tokens_per_s_inprocess": round(rate["inprocess"], 1),
        "tokens_per_s_grpc": round(rate["grpc"], 1),
        "grpc_vs_inprocess": round(rate["grpc"] / rate["inprocess"], 3),
        "lora_rank": args.lora_rank,
        "lora_adapter_bytes": max(sizes) if sizes else 0,
        "lora_update_p50_s": round(statistics.median(lora_times), 4) if lora_times else None,
        "lora_update_mean_s": round(statistics.fmean(lora_times), 4) if lora_times else None,
        "lora_update_max_s": round(max(lora_times), 4) if lora_times else None,
        "full_update_s": round(full_s, 4),
        "full_weights_bytes": pushed_full.bytes_received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, few rounds: well under a minute on 2 cores")
    parser.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "llava"])
    parser.add_argument("--preset", default=None, help="tiny | small | base (default: small, tiny with --quick)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per request (B)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds of each mode (default 6, 8 with --quick)")
    parser.add_argument("--updates", type=int, default=None, help="adapter pushes timed (default 10, 6 with --quick)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    args.preset = args.preset or ("tiny" if args.quick else "small")
    args.rounds = args.rounds or (8 if args.quick else 6)
    args.updates = args.updates or (6 if args.quick else 10)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    result = asyncio.run(run(args))
    print(f"in process: {result['tokens_per_s_inprocess']} tok/s, gRPC: {result['tokens_per_s_grpc']} tok/s "
          f"(ratio {result['grpc_vs_inprocess']}); LoRA r={args.lora_rank} push p50 {result['lora_update_p50_s']} s "
          f"({result['lora_adapter_bytes']} bytes), full weights {result['full_update_s']} s", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
