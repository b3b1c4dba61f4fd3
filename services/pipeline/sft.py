"""The second stage: the supervised warm start of the policy, on a world or on outside VQA data.

``run_sft`` / ``run_sft_data`` are `mor sft` (they write where they are told); ``ensure_sft`` is the
pipeline's stage, reused while the world's content and the policy and SFT configs are the same
(cache.py). The maths lives in models.sft and models.vision_warmup; this module decides which
examples, which styles, where files go and what is printed.
"""
from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.data.answers import STYLES, normalize_answer, render_answer
from services.common.data.sources import ImageSource, read_vqa, sft_answer
from services.common.data.world import World, load_world
from services.common.evaluation import evaluate_examples, evaluate_policy
from services.common.models.config import ModelConfig, SFTConfig
from services.common.models.factory import build_vlm
from services.common.models.sft import SFTExample, cpu_threads, sft_train
from services.common.models.vision_warmup import encode, vision_warmup
from services.pipeline import cache
from services.pipeline.world import world_hash

QUICK_POLICY = {"preset": "tiny"}
QUICK_SFT = {"steps": 30, "batch_size": 8, "warmup": 3, "lr": 3e-3, "vision_warmup_steps": 20}
REPORT = "sft_report.json"


def sft_examples(world: World, seed: int = 0, answer_styles: str = "all") -> list[SFTExample]:
    """Warm-start examples: train examples no client, pool prompt or router pair uses. Each is answered
    in one of the client styles (round robin over a seeded shuffle), so RL starts from a policy that
    can write every style and the reward nodes have something to choose between; with
    ``answer_styles="domain"`` a benchmark with a home client is answered in that client's style
    instead (the server knows each domain's convention, not its answers)."""
    rng = random.Random(seed)
    examples = world.sft_examples()
    rng.shuffle(examples)
    conventions = world.config.domain_styles() if answer_styles == "domain" else {}
    return [
        SFTExample(image=world.load_image(ex.image), question=ex.question,
                   answer=render_answer(ex, conventions.get(ex.benchmark, STYLES[i % len(STYLES)]), rng))
        for i, ex in enumerate(examples)
    ]


def warm_up_vision(vlm, world: World | ImageSource, sft: SFTConfig, examples: list | None = None):
    """Stage 1 on the same examples SFT will see (a world's SFT examples unless ``examples`` are given):
    the tower learns to tell the short answers apart."""
    examples = world.sft_examples() if examples is None else examples
    encoded = encode(vlm, [world.load_image(e.image) for e in examples], [e.question for e in examples],
                     [normalize_answer(e.canonical_answer) for e in examples])
    with cpu_threads(sft.num_threads) if vlm.device.type == "cpu" else contextlib.nullcontext():
        return vision_warmup(vlm, encoded, steps=sft.vision_warmup_steps, seed=sft.seed)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _warm_start(out: Path, policy: ModelConfig, sft: SFTConfig, console: Console, images: World | ImageSource,
                warmup_examples: list | None, train: Callable[[], list[SFTExample]], source: str,
                evaluate: Callable[[Any, Console], dict]) -> dict[str, Any]:
    """What both warm starts do: build the policy, evaluate it (a checkpoint only), vision warm-up (a
    preset only), SFT, save to ``out``, evaluate again; returns the common part of the report."""
    vlm = build_vlm(policy)
    console.print(f"[green]policy[/] {policy.arch}/{policy.preset if policy.path is None else policy.path}: "
                  f"{vlm.num_parameters() / 1e6:.2f}M parameters")
    # A random init answers nothing; only a checkpoint has a "before" worth the time.
    before = evaluate(vlm, console) if policy.path is not None else None
    warmup = None
    if policy.path is None and sft.vision_warmup_steps:
        warmup = warm_up_vision(vlm, images, sft, examples=warmup_examples)
        console.print(f"[green]vision warm-up[/] {warmup.steps} steps, {warmup.classes} answer classes, "
                      f"loss {warmup.losses[0][1]:.2f}→{warmup.losses[-1][1]:.2f}, {warmup.seconds:.0f}s")
    examples = train()
    console.print(f"[green]sft[/] {len(examples)} examples{source}, {sft.steps} steps of {sft.batch_size}")
    result = sft_train(vlm, examples, sft, progress=True, pretrained=policy.is_checkpoint)
    vlm.save(out)
    after = evaluate(vlm, console)
    return {
        "policy": policy.model_dump(mode="json"), "sft": sft.model_dump(mode="json"), "parameters": vlm.num_parameters(),
        "train_examples": len(examples),
        "vision_warmup": None if warmup is None else {"steps": warmup.steps, "losses": warmup.losses,
                                                      "train_accuracy": warmup.train_accuracy, "seconds": warmup.seconds},
        "final_loss": result.final_loss, "losses": result.losses, "step_time_s": result.step_time_s,
        "seconds": result.seconds, "before": before, "after": after, "checkpoint": str(out),
    }


def _write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    (Path(out) / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def run_sft(world_dir: Path, out: Path, policy: ModelConfig, sft: SFTConfig, eval_examples: int = 200,
            console: Console | None = None) -> dict[str, Any]:
    """Build (or load) the policy, warm-start it on the world, save it, evaluate before and after.

    Writes ``out`` (an HF checkpoint dir) and ``out/sft_report.json``; returns the report.
    """
    console = console or Console(stderr=True)
    world = load_world(world_dir)

    def evaluate(vlm: Any, con: Console) -> dict:
        with _progress(con) as bar:
            # per example: the stack's table pairs the run's answers with these, without evaluating the start again
            return evaluate_policy(vlm, world, per_benchmark=eval_examples, progress=bar, per_example=True)

    report = _warm_start(out, policy, sft, console, world, None, lambda: sft_examples(world, seed=sft.seed, answer_styles=sft.answer_styles), "",
                         evaluate)
    return _write_report(out, report)


def run_sft_data(data: Path, out: Path, policy: ModelConfig, sft: SFTConfig, split: str | None = None,
                 eval_split: str | None = None, eval_examples: int = 200, console: Console | None = None) -> dict[str, Any]:
    """``run_sft`` on an outside VQA dataset (docs/data.md): train on ``split`` (default train, else its
    only split), each target the reference answer as written; evaluate on ``eval_split`` (default: its
    test split when it has one, else the training examples, flagged ``eval_on_train``).

    DatasetError (a ValueError) names the file, record and field of bad data before anything trains."""
    console = console or Console(stderr=True)
    train_set = read_vqa(data, split, default=("train",))
    train_examples = train_set.examples("`mor sft`")
    on_train = eval_split is None and not ("test" in train_set.splits and train_set.split != "test")
    if eval_split is None and not on_train:
        eval_split = "test"
    held = read_vqa(data, eval_split) if eval_split is not None else train_set
    held_examples = held.examples("the evaluation of `mor sft`") if eval_split is not None else train_examples

    def evaluate(vlm: Any, con: Console) -> dict:
        with _progress(con) as bar:
            return evaluate_examples(vlm, held.images, held_examples, per_benchmark=eval_examples, split=held.split,
                                     progress=bar)

    def train() -> list[SFTExample]:
        return [SFTExample(image=train_set.images.load_image(ex.image), question=ex.question,
                           answer=sft_answer(ex.answers)) for ex in train_examples]

    report = _warm_start(out, policy, sft, console, train_set.images, train_examples, train,
                         f" of {data} ({train_set.split})", evaluate)
    report.update(data=str(data), format=train_set.format, train_split=train_set.split, eval_split=held.split,
                  eval_on_train=on_train)
    return _write_report(out, report)


def ensure_sft(world: World, out: Path, policy: ModelConfig, sft: SFTConfig, eval_examples: int = 200,
               console: Console | None = None) -> dict[str, Any]:
    """The pipeline's SFT start at ``out``: reused while built from the same world content, policy and
    SFT config (cache.py), else ``run_sft``; its report either way."""
    console = console or Console(stderr=True)
    inputs = {"world": world_hash(world.root), "policy": policy.model_dump(mode="json"),
              "sft": sft.model_dump(mode="json")}
    if not cache.ensure(out, inputs, lambda: run_sft(world.root, out, policy, sft, eval_examples=eval_examples,
                                                     console=console)):
        console.print(f"[green]policy[/] reusing SFT checkpoint {out} (same world, policy and sft config)")
    return json.loads((out / REPORT).read_text())


def sft_table(report: dict[str, Any]) -> Table:
    """Held-out accuracy per benchmark before and after the warm start, with chance levels."""
    before, after = report["before"], report["after"]
    world = "client_preference" in after  # outside data has no chance levels and no oracle
    split = "held-out split" if not report.get("eval_on_train") else "training split (the dataset has no test split)"
    table = Table(title=f"{split}, {report['parameters'] / 1e6:.2f}M-parameter policy after SFT")
    cols = ["benchmark", "n", *(["chance", "blind prior"] if world else []), *(["before exact"] if before else []),
            "exact match", "VQA acc", "format ok"]
    for col in cols:
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for b, row in after["benchmarks"].items():
        was = [f"{before['benchmarks'][b]['exact_match']:.3f}"] if before else []
        prior = [f"{row['chance']:.3f}", f"{row['blind']:.3f}"] if world else []
        table.add_row(b, str(row["n"]), *prior, *was,
                      f"{row['exact_match']:.3f}", f"{row['vqa_accuracy']:.3f}", f"{row['format_ok']:.3f}")
    if world:
        table.caption = "mean true preference of each client (oracle): " + ", ".join(
            f"{c} {s:.2f}" for c, s in after["client_preference"].items())
    return table


__all__ = ["QUICK_POLICY", "QUICK_SFT", "ensure_sft", "run_sft", "run_sft_data", "sft_examples", "sft_table",
           "warm_up_vision"]
