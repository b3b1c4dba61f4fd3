"""`mor reward-node`: one organisation's private RM training and its Score server."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from services.cli.common import EXIT_CONFIG, EXIT_DATA, fail
from services.common.config import ConfigError, build, load_yaml

app = typer.Typer(no_args_is_help=True, help="One organisation's reward node: private RM training and the Score server.")


def _load_reward_node(config: Path):
    from services.common.config import RewardNodeSettings

    try:
        return load_yaml(RewardNodeSettings, config)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        raise  # unreachable


@app.command("train")
def reward_node_train(
    config: Path = typer.Option(..., "--config", "-c", help="Reward-node YAML (node_id, data_dir, model, train)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Checkpoint folder; default model.checkpoint."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Override data_dir: a world, a client folder, or a preference "
                                     "dataset (TRL prompt/chosen/rejected/images or plain JSONL; docs/data.md)."),
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Train the node's RM (Bradley-Terry) on its own preference pairs; print held-out pair accuracy."""
    from services.reward_node.checkpoint import CheckpointError
    from services.reward_node.data import DataError
    from services.reward_node.train import train_rm

    settings = _load_reward_node(config)
    try:
        if epochs is not None:
            train = {**settings.train.model_dump(), "epochs": epochs}
            settings = build(type(settings), {**settings.model_dump(), "train": train}, "--epochs")
        if data is not None:
            settings = build(type(settings), {**settings.model_dump(), "data_dir": data}, "--data")
        result = train_rm(settings, out_dir=out, progress=not quiet)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except (DataError, CheckpointError) as exc:
        fail(str(exc), EXIT_DATA)
    meta = result.metadata
    table = Table(title=f"reward node {meta['node_id']}: {meta['kind']} RM")
    for col in ("held-out acc", "train acc", "pairs", "score mean/std", "seconds", "version"):
        table.add_column(col)
    table.add_row(f"{meta['held_out_accuracy']:.3f}", f"{meta['train_accuracy']:.3f}",
                  f"{meta['data']['n_train_pairs']}/{meta['data']['n_held_out_pairs']}",
                  f"{meta['score_mean']:.3f}/{meta['score_std']:.3f}", f"{result.seconds:.1f}", meta["model_version"])
    Console(stderr=True).print(table)
    Console(stderr=True).print(competence_table(meta))
    by = {name: {k: round(v["accuracy"], 4) for k, v in groups.items()} for name, groups in meta["held_out_by"].items()}
    typer.echo(json.dumps({"node_id": meta["node_id"], "kind": meta["kind"], "checkpoint": str(result.checkpoint),
                           "held_out_accuracy": round(meta["held_out_accuracy"], 4), "held_out_by": by,
                           "model_version": meta["model_version"]}, sort_keys=True))


def competence_table(meta: dict[str, Any]) -> Table:
    """Held-out pair accuracy (pairs) by pair kind (rows) and benchmark (columns), from RM metadata."""
    by = meta["held_out_by"]
    benchmarks = sorted(by["benchmark"])
    table = Table(title=f"{meta['node_id']}: held-out pair accuracy by kind and benchmark (pairs)")
    for col in ("kind", *benchmarks, "all"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, tot in by["kind"].items():
        cells = [by["kind_benchmark"].get(f"{kind}/{b}") for b in benchmarks]
        table.add_row(kind, *(f"{c['accuracy']:.3f} ({c['pairs']})" if c else "-" for c in cells),
                      f"{tot['accuracy']:.3f} ({tot['pairs']})")
    return table


@app.command("serve")
def reward_node_serve(
    config: Path = typer.Option(..., "--config", "-c", help="Reward-node YAML (model.checkpoint, server, tls, auth, ...)."),
) -> None:
    """Serve mor.v1.RewardNode (Score, ScoreBatch, GetInfo, health, reflection) until SIGTERM."""
    import asyncio
    import logging

    from services.common.grpc.interceptors import RequestIdLogFilter
    from services.reward_node.app import build_app

    settings = _load_reward_node(config)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        asyncio.run(build_app(settings).run())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
