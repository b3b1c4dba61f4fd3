"""`mor stack up` and `mor demo`: the whole system on loopback, as processes."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from services.cli.common import EXIT_RUN, fail, load_stack

app = typer.Typer(no_args_is_help=True, help="The whole system on loopback: nodes, sampler, orchestrator.")


def _stack_up(config: Path, quick: bool) -> None:
    from services.pipeline.stack import Stack

    stack = load_stack(config)
    try:
        Stack(stack, quick=quick, console=Console()).up()
    except KeyboardInterrupt:
        fail("interrupted: every service was stopped", 130)
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc), EXIT_RUN)


@app.command("up")
def stack_up(
    config: Path = typer.Option(Path("examples/local.yaml"), "--config", "-c", help="Stack YAML."),
    quick: bool = typer.Option(False, help="Tiny world, model and run: a smoke run of a few minutes."),
) -> None:
    """World -> SFT -> client RMs -> K reward nodes + sampler + orchestrator as processes -> result table."""
    _stack_up(config, quick)


# `mor demo`, a root command: registered on the root app by services/cli/__init__.py.
def demo(
    config: Path = typer.Option(Path("examples/local.yaml"), "--config", "-c", help="Stack YAML."),
    quick: bool = typer.Option(False, help="Tiny model and few steps: a smoke run."),
) -> None:
    """The README demo: `mor stack up` on examples/local.yaml, ending with SFT-vs-MoR results."""
    _stack_up(config, quick)
