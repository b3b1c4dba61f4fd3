"""Glue of the foundation commands: world making, the supervised warm start and the demo table.

The maths lives elsewhere (models.sft, data.*); this module decides which examples, which styles,
where files go and what is printed.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.data.answers import STYLES, render_answer
from services.common.data.config import WorldConfig
from services.common.data.sources import ImageSource
from services.common.data.world import World, WorldFormatError, load_world
from services.common.data.world_writer import make_world
from services.common.models.config import ModelConfig, SFTConfig

QUICK_POLICY = {"preset": "tiny"}
QUICK_SFT = {"steps": 30, "batch_size": 8, "warmup": 3, "lr": 3e-3, "vision_warmup_steps": 20}


def world_config(section: WorldConfig, seed: int | None = None, quick: bool = False) -> WorldConfig:
    """The world to make: the stack's section, or a seconds-to-make one for smoke runs."""
    if quick:
        return WorldConfig.small(seed=section.seed if seed is None else seed)
    return section if seed is None else section.model_copy(update={"seed": seed})


def ensure_world(cfg: WorldConfig, path: Path, console: Console) -> World:
    """Reuse the world at ``path`` when it was made from the same config, else (re)make it."""
    try:
        world = load_world(path)
        if world.config == cfg:
            console.print(f"[green]world[/] reusing {path} (same config and seed)")
            return world
        console.print(f"[yellow]world[/] {path} was made from another config: remaking it")
    except WorldFormatError:
        pass
    t0 = time.perf_counter()
    make_world(cfg, path, progress=True, overwrite=True)
    console.print(f"[green]world[/] made {path} in {time.perf_counter() - t0:.1f}s")
    return load_world(path)


def world_summary(world: World) -> Table:
    """A table of what a world holds."""
    table = Table(title=f"world {world.root} (seed {world.config.seed})")
    for col in ("part", "name", "train", "test", "notes"):
        table.add_column(col)
    for b in world.benchmarks:
        table.add_row("benchmark", b, str(len(world.examples(b, "train"))), str(len(world.examples(b, "test"))), "")
    for name, spec in world.clients.items():
        mix = ", ".join(f"{b} {w:g}" for b, w in spec.domain_mix.items())
        notes = f"style {spec.style}, rm {spec.rm_arch}, {mix}"
        if spec.label_noise:
            notes += f", {spec.label_noise:.0%} flipped"
        if world.is_held_out(name):
            notes += ", held out"
        table.add_row("client", name, str(len(world.pairs(name, "train"))), str(len(world.pairs(name, "test"))), notes)
    table.add_row("server", "prompt pool", str(len(world.prompt_pool())), "", "no client data")
    table.add_row("server", "calibration pairs", str(len(world.calibration_pairs())), "", "neutral oracle")
    return table


def sft_examples(world: World, seed: int = 0) -> list:
    """Warm-start examples: train examples no client, pool or calibration set uses, each answered in one
    of the client styles (round robin over a seeded shuffle), so RL starts from a policy that can
    write every style and the reward nodes have something to choose between."""
    from services.common.models.sft import SFTExample

    rng = random.Random(seed)
    examples = world.sft_examples()
    rng.shuffle(examples)
    return [
        SFTExample(image=world.load_image(ex.image), question=ex.question,
                   answer=render_answer(ex, STYLES[i % len(STYLES)], rng))
        for i, ex in enumerate(examples)
    ]


def warm_up_vision(vlm, world: World | ImageSource, sft: SFTConfig, examples: list | None = None):
    """Stage 1 on the same examples SFT will see (a world's SFT examples unless ``examples`` are given):
    the tower learns to tell the short answers apart."""
    from services.common.data.answers import normalize_answer
    from services.common.models.vision_warmup import encode, vision_warmup

    examples = world.sft_examples() if examples is None else examples
    encoded = encode(vlm, [world.load_image(e.image) for e in examples], [e.question for e in examples],
                     [normalize_answer(e.canonical_answer) for e in examples])
    return vision_warmup(vlm, encoded, steps=sft.vision_warmup_steps, seed=sft.seed)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def run_sft(world_dir: Path, out: Path, policy: ModelConfig, sft: SFTConfig, eval_examples: int = 200,
            console: Console | None = None) -> dict[str, Any]:
    """Build (or load) the policy, warm-start it on the world, save it, evaluate before and after.

    Writes ``out`` (an HF checkpoint dir) and ``out/sft_report.json``; returns the report.
    """
    from services.common.evaluation import evaluate_policy
    from services.common.models.factory import build_vlm
    from services.common.models.sft import sft_train

    console = console or Console(stderr=True)
    world = load_world(world_dir)
    vlm = build_vlm(policy)
    console.print(f"[green]policy[/] {policy.arch}/{policy.preset if policy.path is None else policy.path}: "
                  f"{vlm.num_parameters() / 1e6:.2f}M parameters")
    before = None
    if policy.path is not None:  # a random init answers nothing; only a checkpoint has a "before" worth the time
        with _progress(console) as bar:
            before = evaluate_policy(vlm, world, per_benchmark=eval_examples, progress=bar)
    warmup = None
    if policy.path is None and sft.vision_warmup_steps:
        warmup = warm_up_vision(vlm, world, sft)
        console.print(f"[green]vision warm-up[/] {warmup.steps} steps, {warmup.classes} answer classes, "
                      f"loss {warmup.losses[0][1]:.2f}→{warmup.losses[-1][1]:.2f}, {warmup.seconds:.0f}s")
    train = sft_examples(world, seed=sft.seed)
    console.print(f"[green]sft[/] {len(train)} examples, {sft.steps} steps of {sft.batch_size}")
    result = sft_train(vlm, train, sft, progress=True, pretrained=policy.is_checkpoint)
    vlm.save(out)
    with _progress(console) as bar:
        after = evaluate_policy(vlm, world, per_benchmark=eval_examples, progress=bar)
    report = {
        "policy": policy.model_dump(mode="json"),
        "sft": sft.model_dump(mode="json"),
        "parameters": vlm.num_parameters(),
        "train_examples": len(train),
        "vision_warmup": None if warmup is None else {"steps": warmup.steps, "losses": warmup.losses,
                                                      "train_accuracy": warmup.train_accuracy,
                                                      "seconds": warmup.seconds},
        "final_loss": result.final_loss,
        "losses": result.losses,
        "step_time_s": result.step_time_s,
        "seconds": result.seconds,
        "before": before,
        "after": after,
        "checkpoint": str(out),
    }
    (Path(out) / "sft_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def run_sft_data(data: Path, out: Path, policy: ModelConfig, sft: SFTConfig, split: str | None = None,
                 eval_split: str | None = None, eval_examples: int = 200, console: Console | None = None) -> dict[str, Any]:
    """``run_sft`` on an outside VQA dataset (docs/data.md): train on ``split`` (default train, else its
    only split), each target the reference answer as written; evaluate on ``eval_split`` (default: its
    test split when it has one, else the training examples, flagged ``eval_on_train``).

    DatasetError (a ValueError) names the file, record and field of bad data before anything trains."""
    from services.common.data.sources import read_vqa, sft_answer
    from services.common.evaluation import evaluate_examples
    from services.common.models.factory import build_vlm
    from services.common.models.sft import SFTExample, sft_train

    console = console or Console(stderr=True)
    train_set = read_vqa(data, split, default=("train",))
    train_examples = train_set.examples("`mor sft`")
    if eval_split is None and "test" in train_set.splits and train_set.split != "test":
        eval_split = "test"
    held = read_vqa(data, eval_split) if eval_split is not None else train_set
    held_examples = held.examples("the evaluation of `mor sft`") if eval_split is not None else train_examples
    vlm = build_vlm(policy)
    console.print(f"[green]policy[/] {policy.arch}/{policy.preset if policy.path is None else policy.path}: "
                  f"{vlm.num_parameters() / 1e6:.2f}M parameters")

    def evaluate() -> dict:
        with _progress(console) as bar:
            return evaluate_examples(vlm, held.images, held_examples, per_benchmark=eval_examples, split=held.split,
                                     progress=bar)

    before = evaluate() if policy.path is not None else None
    warmup = None
    if policy.path is None and sft.vision_warmup_steps:
        warmup = warm_up_vision(vlm, train_set.images, sft, examples=train_examples)
        console.print(f"[green]vision warm-up[/] {warmup.steps} steps, {warmup.classes} answer classes, "
                      f"loss {warmup.losses[0][1]:.2f}→{warmup.losses[-1][1]:.2f}, {warmup.seconds:.0f}s")
    train = [SFTExample(image=train_set.images.load_image(ex.image), question=ex.question, answer=sft_answer(ex.answers))
             for ex in train_examples]
    console.print(f"[green]sft[/] {len(train)} examples of {data} ({train_set.split}), {sft.steps} steps of {sft.batch_size}")
    result = sft_train(vlm, train, sft, progress=True, pretrained=policy.is_checkpoint)
    vlm.save(out)
    after = evaluate()
    report = {
        "policy": policy.model_dump(mode="json"), "sft": sft.model_dump(mode="json"), "parameters": vlm.num_parameters(),
        "data": str(data), "format": train_set.format, "train_split": train_set.split, "eval_split": held.split,
        "eval_on_train": eval_split is None, "train_examples": len(train),
        "vision_warmup": None if warmup is None else {"steps": warmup.steps, "losses": warmup.losses,
                                                      "train_accuracy": warmup.train_accuracy, "seconds": warmup.seconds},
        "final_loss": result.final_loss, "losses": result.losses, "step_time_s": result.step_time_s,
        "seconds": result.seconds, "before": before, "after": after, "checkpoint": str(out),
    }
    (Path(out) / "sft_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def result_table(report: dict[str, Any]) -> Table:
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
