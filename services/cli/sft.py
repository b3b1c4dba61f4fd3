"""`mor sft`: the supervised warm start of a policy."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from services.cli.common import EXIT_CONFIG, EXIT_DATA, fail, load_stack
from services.common.config import ConfigError, build


# `mor sft`, a root command: registered on the root app by services/cli/__init__.py.
def sft(
    world: Path = typer.Option(Path("data/world"), help="World folder made by `mor data make`."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Train on this VQA dataset instead of the world: JSONL, "
                                     "parquet, save_to_disk folder, folder of split files or VQAv2 JSON (docs/data.md)."),
    split: str | None = typer.Option(None, help="With --data: the split to train on (default: train, else its only split)."),
    eval_split: str | None = typer.Option(None, help="With --data: the split to evaluate on (default: test when the "
                                          "dataset has one, else the training examples)."),
    out: Path = typer.Option(Path("runs/sft"), "--out", "-o", help="Checkpoint folder (HF format) for the warm-started policy."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Stack YAML whose `policy:` and `sft:` sections are used."),
    policy_dir: Path | None = typer.Option(None, "--policy", "-p", help="Start from this local HF checkpoint folder "
                                           "(sets policy.path; docs: README 'Your own model and data')."),
    preset: str | None = typer.Option(None, help="Override policy.preset (tiny, small, ...)."),
    arch: str | None = typer.Option(None, help="Override policy.arch (qwen2_vl, llava)."),
    steps: int | None = typer.Option(None, help="Override sft.steps."),
    finetune: str | None = typer.Option(None, help="Override sft.finetune: auto (LoRA on a checkpoint, full on a "
                                        "preset), lora or full."),
    eval_examples: int = typer.Option(200, help="Held-out examples per benchmark to evaluate."),
) -> None:
    """Supervised warm start: teach a policy the answer format on the world's training split (or a dataset's)."""
    from services.common.data.sources import DatasetError
    from services.common.data.world import WorldFormatError
    from services.common.models.families import CheckpointError
    from services.pipeline.sft import run_sft, run_sft_data, sft_table

    if data is None and (split or eval_split):
        fail("--split / --eval-split choose splits of --data; a world trains on its own SFT examples", EXIT_CONFIG)
    stack = load_stack(config)
    overrides = {"preset": preset, "arch": arch, "path": policy_dir}
    sft_overrides = {"steps": steps, "finetune": finetune}
    try:
        policy = build(type(stack.policy), {**stack.policy.model_dump(), **{k: v for k, v in overrides.items() if v}}, "policy")
        sft_cfg = build(type(stack.sft), {**stack.sft.model_dump(), **{k: v for k, v in sft_overrides.items() if v}}, "sft")
        if data is None:
            report = run_sft(world, out, policy, sft_cfg, eval_examples=eval_examples, console=Console())
        else:
            report = run_sft_data(data, out, policy, sft_cfg, split=split, eval_split=eval_split,
                                  eval_examples=eval_examples, console=Console())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except WorldFormatError as exc:
        fail(str(exc), EXIT_DATA)
    except DatasetError as exc:
        fail(f"--data: {exc}", EXIT_DATA)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(f"policy: {exc}", EXIT_DATA)
    Console().print(sft_table(report))
    summary = {b: round(r["exact_match"], 4) for b, r in report["after"]["benchmarks"].items()}
    typer.echo(json.dumps({"checkpoint": report["checkpoint"], "exact_match": summary}, sort_keys=True))
