"""The one `mor` command line. Sub-commands import their service lazily so `mor --help` stays fast."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from services.common.config import CONFIG_KINDS, ConfigError, StackConfig, describe_fields, load_yaml, redacted_dump

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="MoR: federated alignment of VLMs with a Mixture of Rewards.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate configuration files.")
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect the synthetic federated VQA world.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

console = Console(stderr=True)

# Distinct exit codes, so scripts can tell a bad config from a failed job.
EXIT_CONFIG = 2
EXIT_DATA = 3


def fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _kind(kind: str):
    if kind not in CONFIG_KINDS:
        fail(f"unknown config kind {kind!r}; choose one of {', '.join(CONFIG_KINDS)}", EXIT_CONFIG)
    return CONFIG_KINDS[kind]


def _load_stack(config: Optional[Path]) -> StackConfig:
    try:
        return load_yaml(StackConfig, config) if config else StackConfig()
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        raise  # unreachable; keeps type checkers quiet


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    typer.echo(_v("mor"))


@config_app.command("show")
def config_show(kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}")) -> None:
    """List every field of a config kind with its type, default and description."""
    table = Table(title=f"{kind} config", show_lines=False)
    for col in ("field", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in describe_fields(_kind(kind)):
        table.add_row(*row)
    Console().print(table)


@config_app.command("check")
def config_check(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}"),
    path: Path = typer.Argument(..., help="YAML file to validate."),
) -> None:
    """Validate a YAML file (environment overrides applied) and print it with secrets redacted."""
    try:
        cfg = load_yaml(_kind(kind), path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(json.dumps(redacted_dump(cfg), indent=2, default=str))


@data_app.command("make")
def data_make(
    out: Path = typer.Option(Path("data/world"), "--out", "-o", help="Folder to write the world into."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Stack YAML whose `world:` section is used."),
    seed: Optional[int] = typer.Option(None, help="Override world.seed."),
    quick: bool = typer.Option(False, help="Small counts, for smoke tests."),
) -> None:
    """Generate the seeded, deterministic federated VQA world (benchmarks, clients, server sets)."""
    from services.common.data.world import make_world
    from services.common.warm_start import world_config

    cfg = world_config(_load_stack(config).world, seed=seed, quick=quick)
    manifest = make_world(cfg, out, progress=True)
    typer.echo(str(manifest))


@data_app.command("info")
def data_info(path: Path = typer.Argument(Path("data/world"), help="World folder.")) -> None:
    """Summarise a world on disk: benchmarks, splits, clients and their preference sets."""
    from services.common.data.world import load_world
    from services.common.warm_start import world_summary

    try:
        world = load_world(path)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), EXIT_DATA)
    Console().print(world_summary(world))


@app.command()
def sft(
    world: Path = typer.Option(Path("data/world"), help="World folder made by `mor data make`."),
    out: Path = typer.Option(Path("runs/sft"), "--out", "-o", help="Checkpoint folder (HF format) for the warm-started policy."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Stack YAML whose `policy:` and `sft:` sections are used."),
    preset: Optional[str] = typer.Option(None, help="Override policy.preset (tiny, small, ...)."),
    arch: Optional[str] = typer.Option(None, help="Override policy.arch (qwen2_vl, llava)."),
    steps: Optional[int] = typer.Option(None, help="Override sft.steps."),
    eval_examples: int = typer.Option(200, help="Held-out examples per benchmark to evaluate."),
) -> None:
    """Supervised warm start: teach a policy the answer format on the world's training split."""
    from services.common.warm_start import run_sft

    stack = _load_stack(config)
    try:
        policy = stack.policy.model_copy(update={k: v for k, v in {"preset": preset, "arch": arch}.items() if v})
        policy = type(policy).model_validate(policy.model_dump())
        sft_cfg = stack.sft.model_copy(update={"steps": steps}) if steps else stack.sft
    except Exception as exc:  # pydantic re-validation names the field
        fail(str(exc), EXIT_CONFIG)
    report = run_sft(world, out, policy, sft_cfg, eval_examples=eval_examples, console=Console())
    typer.echo(json.dumps(report, sort_keys=True))


@app.command()
def demo(
    config: Path = typer.Option(Path("examples/local.yaml"), "--config", "-c", help="Stack YAML."),
    quick: bool = typer.Option(False, help="Tiny model and few steps: a smoke run."),
) -> None:
    """The local demo: make the world, warm-start the policy, evaluate it, print the result table."""
    from services.common.warm_start import run_demo

    run_demo(_load_stack(config), quick=quick, console=Console())


def main() -> None:  # pragma: no cover - console entry for `python -m services.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
