"""One GRPO step, side by side: TRL's GRPOTrainer in process vs MoR over gRPC.

    python benchmarks/grpo_step.py [--quick] [--preset small] [--prompts 4] [--group-size 4] [--max-new-tokens 16]

Same policy (Qwen2-VL preset built from config, same seed, LoRA on the language model's projections,
fp32, CPU), same prompts with images (the synthetic world's prompt pool), same B prompts x G answers
x T new tokens, same GRPO settings (beta 0.04 with a reference forward, loss "grpo", one pass), and
the same three clients' light RMs (trained here in seconds, each on its own client's pairs):

(a) trl: TRL's ``GRPOTrainer`` with transformers generation and the three RMs as in-process reward
    functions (summed), gradient checkpointing off (as in MoR). Its processing class is transformers'
    ``Qwen2VLProcessor`` over our offline tokenizer and PIL image processor, without the video
    processor (whose class check needs torchvision).
(b) mor: ``MoRRun`` (this process) against the three reward nodes (three gRPC servers in one child
    process) and the policy sampler (a gRPC server in another child process), on 127.0.0.1 with
    ports chosen at run time, plaintext; learned router, hybrid reward, and a LoRA push to the
    sampler after each step.
(c) mor_overlap: (b) with ``grpo.overlap: true, max_staleness: 1`` (and its own sampler): the
    next batch is generated while the current one is scored and trained. Its step time runs until
    the batch it started has arrived (a pipelined run's next step waits for it): the cycle time.

Phases per step: generate, score (rewards), fuse (MoR: calibration, router, rule rewards; TRL: the
rest of its generate-and-score phase: tokenising, padding, advantages), train (reference forward,
loss, backward, optimizer step), sync (MoR: LoRA push to the sampler; TRL generates with the model it
trains: 0). ``compute`` is the part of the step during which model work ran anywhere (policy
generation, RM forwards, training; timed by wrapping those calls, in every process: perf_counter is
the system-wide monotonic clock), ``overhead`` = step - compute: what the framework adds (RPCs,
serialisation, tokenising, fusion, weight sync, waiting). TRL's own ``step_time`` metric (generation,
rewards, loss and backward, without the optimizer step) is printed beside it.

After TRL's warm-up step, every TRL step is followed by one step of each MoR mode (order alternating)
so drifting load from other processes hits all modes alike; each MoR run's first step is a warm-up
too. Figures are medians over the measured steps; "paired" is the median of each MoR step's time
over the TRL step just before it. The last line printed is one JSON object with the headline figures.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the processes share 2 cores
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.common.config import NodeEndpoint, RewardNodeSettings, RunConfig, SamplerSettings  # noqa: E402
from services.common.data import WorldConfig, make_world  # noqa: E402
from services.common.data.world import load_world  # noqa: E402
from services.common.grpc import serving  # noqa: E402
from services.common.models import ModelConfig, build_vlm  # noqa: E402
from services.orchestrator.grpo.trainer import GRPOTrainer as MoRTrainer  # noqa: E402
from services.orchestrator.rollouts import RemoteSampler  # noqa: E402
from services.orchestrator.training_run import MoRRun  # noqa: E402
from services.reward_node.checkpoint import LoadedRM, load_checkpoint  # noqa: E402
from services.reward_node.train import train_rm  # noqa: E402

NODES = ("clinic", "bank", "school")
MODES = ("trl", "mor", "mor_overlap")
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
KINDS = ("generate", "score", "train")  # the model work that counts as compute
PHASES = ("generate", "score", "fuse", "train", "sync", "total")


# ---- timing ------------------------------------------------------------------------------------
class Timeline:
    """Intervals (kind, start, end) of timed calls, from any thread; optionally appended to a file
    (a child process's spans, read back by the parent)."""

    def __init__(self, path: Path | None = None) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the process

    def add(self, kind: str, t0: float, t1: float) -> None:
        with self._lock:
            self.spans.append((kind, t0, t1))
            if self._file:
                self._file.write(f"{kind} {t0!r} {t1!r}\n")

    def read(self, path: Path) -> None:
        """Add the spans a child process wrote to ``path``."""
        for line in path.read_text().splitlines():
            kind, a, b = line.split()
            self.add(kind, float(a), float(b))

    def wrap(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(kind, t0, time.perf_counter())

        return timed

    def wrap_async(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            self.active[kind] = self.active.get(kind, 0) + 1
            try:
                return await fn(*args, **kwargs)
            finally:
                self.active[kind] -= 1
                self.add(kind, t0, time.perf_counter())

        return timed

    async def idle(self, kind: str) -> float:
        """Wait (on the loop running the async calls wrapped as ``kind``) until none runs; the last one's end."""
        while self.active.get(kind, 0):
            await asyncio.sleep(0.001)
        with self._lock:
            return max((b for k, _, b in self.spans if k == kind), default=0.0)

    def total(self, lo: float, hi: float, kind: str) -> float:
        """Summed seconds of the ``kind`` calls that ran entirely inside [lo, hi]."""
        with self._lock:
            return sum(b - a for k, a, b in self.spans if k == kind and lo <= a and b <= hi)

    def covered(self, lo: float, hi: float, kinds: tuple[str, ...] = KINDS) -> float:
        """Seconds of [lo, hi] during which at least one call of ``kinds`` ran (overlaps counted once)."""
        with self._lock:
            spans = sorted((max(a, lo), min(b, hi)) for k, a, b in self.spans if k in kinds and b > lo and a < hi)
        total, end = 0.0, lo
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total


@dataclass
class Step:
    mode: str
    lo: float  # window of the step (perf_counter seconds)
    hi: float
    phases: dict[str, float]  # PHASES, seconds
    completion_tokens: float = float("nan")
    trl_step_time: float = float("nan")  # TRL's own step_time metric (trl mode)


# ---- set-up: world and the three clients' RMs -------------------------------------------------
def node_settings(world_dir: Path, node_id: str, checkpoint: Path, threads: int, epochs: int = 1) -> RewardNodeSettings:
    return RewardNodeSettings.loopback(node_id, "light", checkpoint, data_dir=world_dir, model={"torch_threads": threads},
                                       train={"epochs": epochs, "batch_size": 16, "lr": 3e-3})


def prepare(root: Path, quick: bool) -> tuple[Path, dict[str, LoadedRM]]:
    """The synthetic world (64x64 images) and each client's light RM, trained on its own pairs."""
    world_dir = root / "world"
    make_world(WorldConfig.small(seed=11, noisy_client=False, image_size=64), world_dir, progress=False)
    loaded = {}
    for node_id in NODES:
        ckpt = root / "rm" / node_id
        train_rm(node_settings(world_dir, node_id, ckpt, threads=1, epochs=1 if quick else 2))
        loaded[node_id] = load_checkpoint(ckpt)
    (root / "rm" / "READY").touch()
    return world_dir, loaded


# ---- the MoR services, each kind in a child process ---------------------------------------------
def serve(argv: list[str]) -> None:
    """Child process: ``--serve samplers|nodes``; prints its ports as one JSON line, serves until its
    stdin closes (the parent exits or closes it), then stops. ``samplers``: one sampler per MoR mode
    (each run numbers its own weight versions); ``nodes``: the three reward nodes, once the RM
    checkpoints are written (the imports overlap the parent's RM training)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["samplers", "nodes"])
    ap.add_argument("--spans", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--world", type=Path)
    ap.add_argument("--rm-dir", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(a.threads)
    tl = Timeline(a.spans)

    async def run() -> None:
        apps: dict[str, Any] = {}
        if a.kind == "samplers":
            from services.policy_sampler.app import SamplerApp
            from services.policy_sampler.backends.hf import HFBackend

            for mode in MODES[1:]:
                settings = SamplerSettings(
                    model={"arch": "qwen2_vl", "preset": a.preset, "seed": 0}, tls={"insecure": True},
                    metrics={"enabled": False}, server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
                    hf={"torch_threads": a.threads, "device": a.device}, max_new_tokens=max(64, a.max_new_tokens),
                )
                backend = HFBackend(settings.model, settings.hf)
                backend._generate_sync = tl.wrap("generate", backend._generate_sync)  # the model thread's work
                apps[mode] = SamplerApp(settings, backend)
        else:
            from services.reward_node.app import build_app

            while not (a.rm_dir / "READY").is_file():
                await asyncio.sleep(0.05)
            for n in NODES:
                loaded = load_checkpoint(a.rm_dir / n)
                loaded.model.score_batch = tl.wrap("score", loaded.model.score_batch)
                apps[n] = build_app(node_settings(a.world, n, a.rm_dir / n, a.threads), loaded=loaded)
        async with serving(list(apps.values())):
            print(json.dumps({n: app.port for n, app in apps.items()}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


class Child:
    """A ``serve`` child process; ``ports()`` waits for the JSON line it prints once serving."""

    def __init__(self, kind: str, root: Path, *extra: str) -> None:
        self.name, self.ready = kind, False
        self.spans, self.log = root / f"{kind}.spans", root / f"{kind}.log"
        self.spans.touch()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--spans", str(self.spans), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
        )

    def ports(self) -> dict[str, int]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        self.ready = True
        return json.loads(line)

    def stop(self) -> None:
        """Close its stdin (a serving child then stops its servers and exits); one not serving yet is terminated."""
        with contextlib.suppress(Exception):
            if self.proc.stdin:
                self.proc.stdin.close()
        if not self.ready:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class MoRSide:
    """One ``MoRRun`` per MoR mode, on an event loop of its own (run by the caller's thread)."""

    def __init__(self, args: argparse.Namespace, world_dir: Path, tl: Timeline, out: Path) -> None:
        self.args, self.world_dir, self.tl, self.out = args, world_dir, tl, out
        self.runs: dict[str, MoRRun] = {}

    async def start(self, sampler_ports: dict[str, int], node_ports: dict[str, int]) -> None:
        a = self.args
        for mode in MODES[1:]:
            overlap = mode == "mor_overlap"
            cfg = RunConfig(
                seed=0, world=self.world_dir, output_dir=self.out / mode, torch_threads=a.threads, device=a.device,
                policy={"arch": "qwen2_vl", "preset": a.preset, "seed": 0},
                sampler={"address": f"127.0.0.1:{sampler_ports[mode]}", "tls": {"insecure": True}, "timeout_s": 300},
                nodes=[NodeEndpoint.loopback(n, p) for n, p in node_ports.items()],
                grpo={"steps": 1_000_000, "prompts_per_step": a.prompts, "group_size": a.group_size,
                      "max_new_tokens": a.max_new_tokens, "lr": a.lr, "beta": 0.04, "loss_type": "grpo",
                      "lora_rank": a.lora_rank, "lora_alpha": 2.0 * a.lora_rank, "lora_target_modules": LORA_TARGETS,
                      "overlap": overlap, "max_staleness": 1 if overlap else 0},
                router={"kind": "mor", "train_steps": 20, "pairs": 12},
                fanout={"step_deadline_s": 300, "min_nodes": len(node_ports)},
                checkpoint_every=1_000_000,
            )
            self.runs[mode] = MoRRun(cfg, on_status=lambda _: None)
            await self.runs[mode].setup()
            await self.step(mode)  # warm-up: first-call costs; the overlap run's first batch is not prefetched

    async def step(self, mode: str) -> Step:
        lo = time.perf_counter()
        r = await self.runs[mode].run_step()
        hi = time.perf_counter()
        if mode == "mor_overlap":
            hi = max(hi, await self.tl.idle("rollout"))  # until the batch it prefetches has arrived
        phases = {k: r.phases[k] for k in ("generate", "score", "fuse", "train")} | {"sync": r.phases["push"], "total": hi - lo}
        return Step(mode, lo, hi, phases, completion_tokens=r.completion_tokens_mean)

    async def close(self) -> None:
        for run in self.runs.values():
            with contextlib.suppress(Exception):
                await run.close()


# ---- (a) TRL -----------------------------------------------------------------------------------
def image_only_processor(vlm: Any) -> Any:
    """transformers' Qwen2VLProcessor over our tokenizer and PIL image processor, minus the video
    processor (its class check imports torchvision, which this project does not install)."""
    from transformers import Qwen2VLProcessor

    from services.common.models.tokenizer import chat_template

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        # ProcessorMixin takes its sub-processors from the __init__ signature: no video_processor here.
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return ImageOnlyQwen2VLProcessor(vlm.image_processor, vlm.tokenizer, chat_template=chat_template("qwen2_vl"))


def trl_reward_funcs(loaded: dict[str, LoadedRM]) -> list[Callable[..., list[float]]]:
    """One in-process reward function per client RM (TRL sums them)."""
    funcs = []
    for node_id, rm in loaded.items():
        def reward(prompts: list, completions: list, question: list[str], image: list, _rm: LoadedRM = rm,
                   **_: Any) -> list[float]:
            # conversational prompts give completions as [{"role": "assistant", "content": text}]
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return _rm.model.score_batch(question, image, texts).tolist()

        reward.__name__ = node_id
        funcs.append(reward)
    return funcs


def build_trl(args: argparse.Namespace, world_dir: Path, loaded: dict[str, LoadedRM], out: Path, tl: Timeline,
              steps: list[Step], between: Callable[[int], None]) -> Any:
    """A GRPOTrainer whose steps are timed into ``steps``; ``between(i)`` runs after its measured step i."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    world = load_world(world_dir)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]}],
             "image": world.load_image(p.image), "question": p.question} for p in world.prompt_pool()]
    vlm = build_vlm(ModelConfig(arch="qwen2_vl", preset=args.preset, seed=0))
    cfg = GRPOConfig(
        output_dir=str(out), use_cpu=args.device == "cpu", bf16=False, seed=0, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, max_steps=1 + args.steps,
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, learning_rate=args.lr, beta=0.04,
        epsilon=0.2, loss_type="grpo", scale_rewards="group", num_iterations=1, max_grad_norm=1.0,
        gradient_checkpointing=False, lr_scheduler_type="constant",
    )
    trainer = GRPOTrainer(
        model=vlm.model, reward_funcs=trl_reward_funcs(loaded), args=cfg, train_dataset=Dataset.from_list(rows),
        processing_class=image_only_processor(vlm),
        peft_config=LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                               target_modules=LORA_TARGETS),
    )
    # Phase timers on the trainer's own methods (instance attributes shadow the class's).
    for name, kind in (("_generate", "generate"), ("_calculate_rewards", "score_wall"),
                       ("_generate_and_score_completions", "prep"), ("_get_per_token_logps_and_entropies", "logps")):
        setattr(trainer, name, tl.wrap(kind, getattr(trainer, name)))
    marks: dict[str, float] = {}
    prepare_inputs, training_step, clip = trainer._prepare_inputs, trainer.training_step, trainer._clip_grad_norm

    def timed_prepare_inputs(*a: Any, **k: Any) -> Any:
        try:
            return prepare_inputs(*a, **k)
        finally:
            marks["prepared"] = time.perf_counter()

    def timed_training_step(*a: Any, **k: Any) -> Any:
        try:
            return training_step(*a, **k)
        finally:
            tl.add("train", marks.pop("prepared"), time.perf_counter())  # loss forward + backward

    def timed_clip(*a: Any, **k: Any) -> Any:
        marks["clip"] = time.perf_counter()
        return clip(*a, **k)

    trainer._prepare_inputs, trainer.training_step, trainer._clip_grad_norm = (
        timed_prepare_inputs, timed_training_step, timed_clip)

    class Clock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            marks["begin"] = time.perf_counter()

        def on_optimizer_step(self, *_: Any, **__: Any) -> None:
            tl.add("train", marks.pop("clip"), time.perf_counter())  # clip + optimizer step

        def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
            lo, hi = marks.pop("begin"), time.perf_counter()
            # The reference forward runs inside the generate-and-score phase, without grad: training work.
            prep = [(a, b) for k, a, b in tl.spans if k == "prep" and lo <= a]
            ref = [(a, b) for k, a, b in tl.spans if k == "logps" and any(pa <= a and b <= pb for pa, pb in prep)]
            for a, b in ref:
                tl.add("train", a, b)
            if state.global_step > 1:  # the first step is a warm-up
                gen, score = tl.total(lo, hi, "generate"), tl.total(lo, hi, "score_wall")
                phases = {"generate": gen, "score": score, "train": tl.total(lo, hi, "train"), "sync": 0.0,
                          "fuse": max(0.0, tl.total(lo, hi, "prep") - gen - score - sum(b - a for a, b in ref)),
                          "total": hi - lo}
                steps.append(Step("trl", lo, hi, phases))
                between(state.global_step)

    trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts on stdout
    trainer.add_callback(Clock())
    return trainer


# ---- driver ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> tuple[list[Step], Timeline, str]:
    """TRL trains in this thread; after each of its measured steps one step of each MoR mode runs
    on the MoR loop's thread while this one waits."""
    import trl

    tl = Timeline()
    steps: list[Step] = []
    patched = {(MoRTrainer, "step"): MoRTrainer.step, (RemoteSampler, "generate"): RemoteSampler.generate}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mor-loop", daemon=True)
    children: list[Child] = []

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    with tempfile.TemporaryDirectory(prefix="mor-grpo-bench-") as tmp:
        root = Path(tmp)
        mor = MoRSide(args, root / "world", tl, root / "runs")
        try:
            # The children boot while the world is made and the RMs train.
            common = ["--threads", str(args.threads), "--preset", args.preset]
            samplers = Child("samplers", root, *common, "--max-new-tokens", str(args.max_new_tokens),
                             "--device", args.device)
            nodes = Child("nodes", root, *common, "--world", str(root / "world"), "--rm-dir", str(root / "rm"))
            children += [samplers, nodes]
            world_dir, loaded = prepare(root, args.quick)
            for rm in loaded.values():  # TRL's reward functions: the same checkpoints, in this process
                rm.model.score_batch = tl.wrap("score", rm.model.score_batch)
            MoRTrainer.step = tl.wrap("train", MoRTrainer.step)  # reference + loss + backward + optimizer step
            RemoteSampler.generate = tl.wrap_async("rollout", RemoteSampler.generate)
            thread.start()
            on_loop(mor.start(samplers.ports(), nodes.ports()))

            def between(i: int) -> None:
                for mode in MODES[1:] if i % 2 == 0 else MODES[:0:-1]:
                    steps.append(on_loop(mor.step(mode)))

            trainer = build_trl(args, world_dir, loaded, root / "trl", tl, steps, between)
            trainer.train()
            logs = [h for h in trainer.state.log_history if "step_time" in h][1:]
            for s, h in zip([s for s in steps if s.mode == "trl"], logs, strict=False):
                s.trl_step_time, s.completion_tokens = h["step_time"], h["completions/mean_length"]
        finally:
            if thread.is_alive():
                on_loop(mor.close())
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
            for child in children:
                child.stop()
            for (owner, name), fn in patched.items():
                setattr(owner, name, fn)
        for child in children:
            tl.read(child.spans)
    return steps, tl, trl.__version__


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarise(steps: list[Step], tl: Timeline) -> dict[str, dict[str, float]]:
    out = {}
    trl = [s for s in steps if s.mode == "trl"]
    for mode in MODES:
        ss = [s for s in steps if s.mode == mode]
        row = {k: median([s.phases[k] for s in ss]) for k in PHASES}
        row |= {f"{k}_compute": median([tl.covered(s.lo, s.hi, (k,)) for s in ss]) for k in KINDS}
        compute = [tl.covered(s.lo, s.hi) for s in ss]
        row["compute"] = median(compute)
        row["overhead"] = median([s.phases["total"] - c for s, c in zip(ss, compute, strict=True)])
        row["completion_tokens"] = median([s.completion_tokens for s in ss])
        row["trl_step_time"] = median([s.trl_step_time for s in ss])
        # step i of each MoR mode ran right after TRL's step i: the ratio sees about the same machine load
        row["paired_vs_trl"] = median([s.phases["total"] / t.phases["total"] for s, t in zip(ss, trl, strict=False)])
        row["n"] = len(ss)
        out[mode] = row
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset, few steps: well under a minute on 2 cores")
    ap.add_argument("--preset", default=None, help="tiny | small | base (default small, tiny with --quick)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step, B (default 4, 2 with --quick)")
    ap.add_argument("--group-size", type=int, default=4, help="answers per prompt, G")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, T")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per mode (default 20, 4 with --quick)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate (both sides)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every process")
    ap.add_argument("--device", default="cpu", help="device of the policy on every side (TRL, MoR trainer, sampler): cpu or cuda")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("tiny" if args.quick else "small")
    args.prompts = args.prompts or (2 if args.quick else 4)
    args.steps = args.steps or (4 if args.quick else 20)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    steps, tl, trl_version = run(args)
    res = summarise(steps, tl)
    a = res["trl"]["total"]
    cols = ("generate", "score", "fuse", "train", "sync", "total", "compute", "overhead")
    print(f"B={args.prompts} prompts x G={args.group_size} answers x T={args.max_new_tokens} tokens, "
          f"qwen2_vl/{args.preset} + LoRA r={args.lora_rank}, {args.threads} torch thread(s) per process, "
          f"{args.steps} measured steps per mode, TRL {trl_version}; median seconds per step:")
    print(f"{'mode':<13}" + "".join(f"{c:>10}" for c in cols) + f"{'vs trl':>8}{'paired':>8}")
    for mode in MODES:
        r = res[mode]
        print(f"{mode:<13}" + "".join(f"{r[c]:>10.3f}" for c in cols) + f"{r['total'] / a:>8.2f}{r['paired_vs_trl']:>8.2f}")
    print("compute (generate / score / train): " + "; ".join(
        f"{m} {res[m]['generate_compute']:.3f} / {res[m]['score_compute']:.3f} / {res[m]['train_compute']:.3f}"
        for m in MODES))
    print(f"TRL's own step_time metric (generate + rewards + loss + backward, no optimizer step): "
          f"{res['trl']['trl_step_time']:.3f} s; completion tokens per answer: trl {res['trl']['completion_tokens']:.1f}, "
          f"mor {res['mor']['completion_tokens']:.1f}; wall {time.perf_counter() - t0:.0f} s")
    headline: dict[str, Any] = {
        "bench": "grpo_step", "arch": "qwen2_vl", "preset": args.preset, "prompts": args.prompts,
        "group_size": args.group_size, "max_new_tokens": args.max_new_tokens, "lora_rank": args.lora_rank,
        "threads": args.threads, "device": args.device, "steps": args.steps, "trl_version": trl_version,
        "mor_vs_trl": round(res["mor"]["total"] / a, 3),
        "mor_overlap_vs_trl": round(res["mor_overlap"]["total"] / a, 3),
        "mor_vs_trl_paired": round(res["mor"]["paired_vs_trl"], 3),
        "mor_overlap_vs_trl_paired": round(res["mor_overlap"]["paired_vs_trl"], 3),
        "trl_own_step_time_s": round(res["trl"]["trl_step_time"], 4),
    }
    for mode in MODES:
        for c in (*cols, "generate_compute", "score_compute", "train_compute"):
            headline[f"{mode}_{c}_s"] = round(res[mode][c], 4)
        headline[f"{mode}_completion_tokens"] = round(res[mode]["completion_tokens"], 2)
        headline[f"{mode}_steps_measured"] = res[mode]["n"]
    print(json.dumps(headline, sort_keys=True))
    return headline


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
    else:
        main()
