"""The third stage: reward models, each trained on one organisation's own pairs (the two baselines on
several organisations' pairs), and real reward nodes serving them in process.

    rm_inputs(settings, world_dir, clients)       what an RM is built from: its cache key (cache.py)
    ensure_rm(settings, world_dir, clients, ...)  train one RM in this process, or reuse it
    serve_nodes(settings)                         reward nodes on 127.0.0.1 for the length of a block

`mor stack up` trains its client RMs with `mor reward-node train` in child processes (stack.py),
under the same key.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from services.common.config import NodeEndpoint, RewardNodeSettings
from services.common.grpc import serving
from services.pipeline import cache
from services.pipeline.baselines import train_fedavg_rm, train_pooled_rm
from services.reward_node.app import build_app
from services.reward_node.checkpoint import read_metadata
from services.reward_node.data import load_node_data
from services.reward_node.rm import LightRM
from services.reward_node.train import train_rm

SOURCES = ("client", "pooled", "fedavg")  # one client's pairs; every client's pooled (central); FedAvg over them


def rm_inputs(settings: RewardNodeSettings, world_dir: Path, clients: Sequence[str], source: str = "client",
              **extra: Any) -> dict[str, Any]:
    """The inputs of the RM ``settings`` trains on the pairs of ``clients`` in ``world_dir``: its kind and
    training config, the content hashes of those clients' data and, for a VLM RM, of its backbone
    checkpoint (the SFT policy; a preset backbone by its config; a light RM has none, but its
    architecture), and ``extra``
    (e.g. the FedAvg rounds)."""
    if source not in SOURCES:
        raise ValueError(f"unknown RM source {source!r}; known: {', '.join(SOURCES)}")
    backbone = settings.model.backbone
    if settings.model.kind != "vlm":
        backbone_key = None
    elif backbone.path is not None:
        backbone_key = cache.content_hash(backbone.path)
    else:
        backbone_key = backbone.model_dump(mode="json")
    # A light RM's architecture is the code's default, not a setting: a new default retrains it.
    architecture = LightRM.build(settings.model).architecture() if settings.model.kind == "light" else None
    return {"kind": settings.model.kind, "source": source,
            "data": [load_node_data(world_dir, c).data_sha256 for c in clients],
            "backbone": backbone_key, "architecture": architecture,
            "train": settings.train.model_dump(mode="json"), **extra}


def ensure_rm(settings: RewardNodeSettings, world_dir: Path, clients: Sequence[str], source: str = "client",
              fedavg: tuple[int, int] | None = None) -> tuple[Path, float]:
    """Train the RM of ``rm_inputs`` into ``settings.model.checkpoint`` unless it is current there:
    train_rm on one client's pairs (``settings.data_dir`` is ``world_dir``), the centralised RM on the
    pooled pairs, or FedAvg with ``fedavg`` = (rounds, local epochs). (checkpoint, held-out pair accuracy)."""
    out = settings.model.checkpoint
    if out is None:
        raise ValueError(f"{settings.node_id}: model.checkpoint, where to write the RM, is not set")
    extra = {"fedavg": list(fedavg)} if source == "fedavg" and fedavg is not None else {}
    inputs = rm_inputs(settings, world_dir, clients, source, **extra)

    def build() -> None:
        if source == "client":
            train_rm(settings)
        elif source == "pooled":
            train_pooled_rm(settings, world_dir, clients)
        else:
            if fedavg is None:
                raise ValueError("a FedAvg RM needs fedavg=(rounds, local_epochs)")
            train_fedavg_rm(settings, world_dir, clients, rounds=fedavg[0], local_epochs=fedavg[1])

    cache.ensure(Path(out), inputs, build)
    return Path(out), float(read_metadata(out)["held_out_accuracy"])


@contextlib.asynccontextmanager
async def serve_nodes(settings: Sequence[RewardNodeSettings]) -> AsyncIterator[dict[str, NodeEndpoint]]:
    """Start one real reward node per settings (see RewardNodeSettings.loopback); yields node_id -> its
    endpoint; stops them on exit."""
    apps = {s.node_id: build_app(s) for s in settings}
    async with serving(list(apps.values())):
        yield {n: NodeEndpoint.loopback(n, app.port) for n, app in apps.items()}


__all__ = ["SOURCES", "ensure_rm", "rm_inputs", "serve_nodes"]
