"""`mor config`: inspect and validate configuration files."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from services.cli.common import EXIT_CONFIG, config_kind, fail
from services.common.config import CONFIG_KINDS, ConfigError, describe_fields, load_yaml, redacted_dump

app = typer.Typer(no_args_is_help=True, help="Inspect and validate configuration files.")


@app.command("show")
def config_show(kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}")) -> None:
    """List every field of a config kind with its type, default and description."""
    table = Table(title=f"{kind} config", show_lines=False)
    for col in ("field", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in describe_fields(config_kind(kind)):
        table.add_row(*row)
    Console().print(table)


@app.command("check")
def config_check(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}"),
    path: Path = typer.Argument(..., help="YAML file to validate."),
) -> None:
    """Validate a YAML file (environment overrides applied) and print it with secrets redacted."""
    try:
        cfg = load_yaml(config_kind(kind), path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(json.dumps(redacted_dump(cfg), indent=2, default=str))
