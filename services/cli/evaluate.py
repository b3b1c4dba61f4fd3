"""`mor eval`: greedy held-out evaluation of a policy checkpoint, optionally against a baseline."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from services.cli.common import EXIT_CONFIG, EXIT_DATA, console, fail


# `mor eval`, a root command: registered on the root app by services/cli/__init__.py.
def eval_policy(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy checkpoint folder (HF format: `mor sft` or a run's policy/)."),
    world: Path = typer.Option(Path("data/world"), "--world", "-w", help="World folder made by `mor data make`."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Evaluate on this VQA dataset instead of the world: JSONL, "
                                     "parquet, save_to_disk folder, folder of split files or VQAv2 questions JSON (docs/data.md)."),
    examples: int = typer.Option(200, "--examples", "-n", help="Examples per benchmark (the first N of the split)."),
    split: str | None = typer.Option(None, help="Split to evaluate. A world: test (held out, the default) or train. A "
                                     "dataset: any split it has (default: test, else its only split)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON report to this file."),
    baseline: Path | None = typer.Option(
        None, "--baseline", "-b", help="Also evaluate this policy on the same examples and compare pair by pair: answers "
        "turned right / wrong and the preference change with its paired standard error (e.g. the SFT start of a run)."),
) -> None:
    """Greedy held-out evaluation of a policy: accuracy and format per benchmark, oracle preference per client (JSON).

    On an outside dataset (--data) there is no oracle: accuracy and format only."""
    from services.common.data.records import SPLITS
    from services.common.data.world import WorldFormatError, load_world

    if examples < 1:
        fail(f"--examples must be at least 1 (got {examples})", EXIT_CONFIG)
    if data is None and split is not None and split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)} (got {split!r})", EXIT_CONFIG)
    for option, path in (("--policy", policy), ("--baseline", baseline)):
        if path is not None and not (path / "config.json").is_file():
            fail(f"{option}: {path} is not a policy checkpoint (no config.json)", EXIT_DATA)
    loaded_world = vqa = None
    try:
        if data is None:
            loaded_world = load_world(world)
        else:
            from services.common.data.sources import read_vqa

            vqa = read_vqa(data, split)
            data_examples = vqa.examples("`mor eval`")
    except WorldFormatError as exc:
        fail(f"--world: {exc}", EXIT_DATA)
    except ValueError as exc:  # DatasetError
        fail(f"--data: {exc}", EXIT_DATA)
    split = vqa.split if vqa is not None else (split or "test")
    from services.common.evaluation import evaluate_examples, evaluate_policy, paired_change
    from services.common.models.factory import load_vlm

    def evaluate(option: str, path: Path) -> dict:
        try:
            vlm = load_vlm(path)
        except (OSError, ValueError) as exc:
            fail(f"{option}: cannot load {path}: {exc}", EXIT_DATA)
        if vqa is not None:
            return evaluate_examples(vlm, vqa.images, data_examples, per_benchmark=examples, split=split,
                                     per_example=baseline is not None)
        return evaluate_policy(vlm, loaded_world, per_benchmark=examples, split=split, per_example=baseline is not None)

    source = {"world": str(world)} if vqa is None else {"data": str(data), "format": vqa.format}
    report = {"policy": str(policy), **source, **evaluate("--policy", policy)}
    table = Table(title=f"{policy} on {data or world} ({split} split, greedy)")
    cols = ["benchmark", "n", "exact match", "VQA acc", "format ok"]
    if vqa is None:
        cols[2:2] = ["chance", "blind prior"]
        cols.append("client preference")
    for col in cols:
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for b, row in report["benchmarks"].items():
        cells = [f"{row['exact_match']:.3f}", f"{row['vqa_accuracy']:.3f}", f"{row['format_ok']:.3f}"]
        if vqa is None:
            cells = [f"{row['chance']:.3f}", f"{row['blind']:.3f}", *cells, f"{row['preference']:.3f}"]
        table.add_row(b, str(row["n"]), *cells)
    if vqa is None:
        table.caption = "oracle preference: " + ", ".join(f"{c} {s:.3f}" for c, s in report["client_preference"].items())
    else:
        table.caption = f"{vqa.format} dataset: no preference oracle, accuracy against its reference answers"
    console.print(table)
    if baseline is not None:
        base = evaluate("--baseline", baseline)
        report["baseline"] = {"policy": str(baseline), **base}
        report["paired"] = {b: paired_change(base, report, b) for b in report["benchmarks"]}
        table = Table(title=f"{policy} vs baseline {baseline}, the same {examples} examples per benchmark")
        for col in ("benchmark", "exact match", "± paired se", "turned right / wrong", "preference", "± paired se"):
            table.add_column(col, justify="left" if col == "benchmark" else "right")
        for b, row in report["benchmarks"].items():
            p, s = report["paired"][b], base["benchmarks"][b]
            pref = (f"{s['preference']:.3f} → {row['preference']:.3f}", f"{p['preference_se']:.3f}") if vqa is None else ("-", "-")
            table.add_row(b, f"{s['exact_match']:.3f} → {row['exact_match']:.3f}", f"{p['exact_match_se']:.3f}",
                          f"{p['turned_right']} / {p['turned_wrong']}", *pref)
        console.print(table)
    text = json.dumps(report, indent=2, sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
