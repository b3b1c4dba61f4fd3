"""`mor data`: make and inspect the synthetic federated VQA world, or summarise an outside dataset."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from services.cli.common import EXIT_CONFIG, EXIT_DATA, console, fail, load_stack
from services.common.config import ConfigError

app = typer.Typer(no_args_is_help=True, help="Make and inspect the synthetic federated VQA world.")


@app.command("make")
def data_make(
    out: Path = typer.Option(Path("data/world"), "--out", "-o", help="Folder to write the world into."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Stack YAML whose `world:` section is used."),
    seed: int | None = typer.Option(None, help="Override world.seed."),
    quick: bool = typer.Option(False, help="Small counts, for smoke tests."),
    force: bool = typer.Option(False, "--force", help="Replace a world already in --out."),
) -> None:
    """Generate the seeded, deterministic federated VQA world (benchmarks, clients, server sets)."""
    from services.common.data.world_writer import make_world
    from services.pipeline.world import world_config

    try:
        cfg = world_config(load_stack(config).world, seed=seed, quick=quick)
        manifest = make_world(cfg, out, progress=True, overwrite=force)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except FileExistsError as exc:
        fail(str(exc), EXIT_DATA)
    typer.echo(str(manifest))


@app.command("info")
def data_info(
    path: Path = typer.Argument(Path("data/world"), help="A world folder, or a dataset: JSONL, parquet, save_to_disk "
                                "folder, folder of split files, VQAv2 questions JSON (docs/data.md)."),
    split: str | None = typer.Option(None, help="Split of a dataset to read (default: test, else train, else the only one)."),
) -> None:
    """Summarise a world (benchmarks, clients, server sets) or an outside dataset (kind, splits, records, images)."""
    from services.common.data.world import WorldFormatError, load_world

    if (path / "manifest.json").is_file():
        from services.pipeline.world import world_summary

        try:
            world = load_world(path)
        except WorldFormatError as exc:
            fail(str(exc), EXIT_DATA)
        Console().print(world_summary(world))
        return
    from services.common.data.sources import DatasetError, describe

    try:
        info = describe(path, split)
    except DatasetError as exc:
        fail(str(exc), EXIT_DATA)
    table = Table(title=f"{info['kind']} dataset {path} ({info['format']})")
    for col in ("split", "records", "answered", "images (files / embedded)", "benchmarks", "columns"):
        table.add_column(col, overflow="fold")
    table.add_row(f"{info['split']} (of {', '.join(info['splits'])})", str(info["records"]),
                  str(info.get("answered", "-")), f"{info['images']['files']} / {info['images']['embedded']}",
                  ", ".join(f"{b} {n}" for b, n in info["benchmarks"].items()), ", ".join(info["columns"]))
    console.print(table)
    typer.echo(json.dumps(info, sort_keys=True))
