"""The one `mor` command line: the root app, assembled from one module per command family.

Sub-commands import their service lazily so `mor --help` stays fast.
"""
from __future__ import annotations

import os
import sys

# Spinning OpenMP threads make torch 5-15x slower when anything else runs on a 2-core machine;
# must be set before torch is imported anywhere in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from services.cli import certs, config, data, evaluate, orchestrator, reward_node, sampler, sft, stack

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="MoR: federated alignment of VLMs with a Mixture of Rewards.")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    typer.echo(_v("mor"))


# Registration order is the order `mor --help` lists them in.
app.command()(sft.sft)
app.command()(stack.demo)
app.command("eval")(evaluate.eval_policy)
app.add_typer(config.app, name="config")
app.add_typer(data.app, name="data")
app.add_typer(certs.app, name="certs")
app.add_typer(stack.app, name="stack")
app.add_typer(sampler.app, name="sampler")
app.add_typer(reward_node.app, name="reward-node")
app.add_typer(orchestrator.app, name="orchestrator")


def main() -> None:  # pragma: no cover - console entry for `python -m services.cli`
    sys.exit(app())
