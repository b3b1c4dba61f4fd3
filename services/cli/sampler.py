"""`mor sampler serve`: the policy sampler's gRPC server."""
from __future__ import annotations

from pathlib import Path

import typer

from services.cli.common import EXIT_CONFIG, fail
from services.common.config import ConfigError, load_yaml

app = typer.Typer(no_args_is_help=True, help="The policy sampler: grouped rollouts and versioned weight updates.")


@app.command("serve")
def sampler_serve(
    config: Path = typer.Option(..., "--config", "-c", help="Sampler YAML (see examples/sampler.yaml); MOR_SAMPLER__* env overrides."),
) -> None:
    """Serve the policy over gRPC until SIGTERM/SIGINT (first signal drains, second stops at once)."""
    import asyncio
    import logging

    from services.common.config import SamplerSettings

    try:
        settings = load_yaml(SamplerSettings, config)
        settings.tls.check_files("server")  # before the heavy imports: fail fast, naming the field
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services.policy_sampler.app import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except FileNotFoundError as exc:
        fail(f"model.path: {exc}", EXIT_CONFIG)
