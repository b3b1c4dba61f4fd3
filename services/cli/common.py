"""What every `mor` command shares: the stderr console, the exit codes and failing with one of them,
and reading the config files the commands take."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from services.common.config import CONFIG_KINDS, ConfigError, StackConfig, load_yaml

console = Console(stderr=True)

# Distinct exit codes, so scripts can tell a bad config from a failed job.
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RUN = 4


def fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def config_kind(kind: str):
    if kind not in CONFIG_KINDS:
        fail(f"unknown config kind {kind!r}; choose one of {', '.join(CONFIG_KINDS)}", EXIT_CONFIG)
    return CONFIG_KINDS[kind]


def load_stack(config: Path | None) -> StackConfig:
    try:
        return load_yaml(StackConfig, config) if config else StackConfig()
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        raise  # unreachable; keeps type checkers quiet
