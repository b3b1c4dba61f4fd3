"""Everything the runs share, built once and cached under the work folder.

    <work>/worlds/<name>/   main, general (no client covers the held-out benchmark), noise<NN>
    <work>/sft/             the one SFT start of every method and seed
    <work>/rm/<node>-<kind>-s<seed>-<key>/   reward models; <key> hashes the node's data files,
                            its training settings and seed, so a client whose pairs are the same in
                            two worlds (the clean clients of the noise worlds) trains once

A cached artefact is reused only when the config that made it is the one asked for.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from services.common.config import RewardNodeSettings
from services.common.data.config import WorldConfig
from services.experiments.profiles import Profile, method


@dataclass(frozen=True)
class Workspace:
    """Where a profile's artefacts live."""

    root: Path

    def world_dir(self, name: str) -> Path:
        return self.root / "worlds" / name

    @property
    def sft_dir(self) -> Path:
        return self.root / "sft"

    @property
    def rm_root(self) -> Path:
        return self.root / "rm"

    def run_dir(self, scenario: str, method: str, seed: int) -> Path:
        return self.root / "runs" / scenario / f"{method.replace(':', '_')}-s{seed}"


@dataclass(frozen=True)
class RMSpec:
    """One reward model to train: whose pairs, which architecture, which seed."""

    node_id: str  # the id it serves under: a client name, "central" or "fedavg"
    world: str
    kind: str  # "light" or "vlm"
    source: str  # "client", "pooled" or "fedavg"
    clients: tuple[str, ...]
    seed: int


def _validated(cfg: WorldConfig, **update: Any) -> WorldConfig:
    return WorldConfig.model_validate({**cfg.model_dump(), **update})


def general_world(cfg: WorldConfig, benchmark: str) -> WorldConfig:
    """The main world where no client covers ``benchmark``: its home expert leaves, the others drop it
    from their domain mix (the server's prompt pool and calibration set still span all benchmarks);
    no noisy or held-out clients."""
    if benchmark not in cfg.benchmarks:
        raise ValueError(f"claims.gen_benchmark {benchmark!r} is not a benchmark of the world ({', '.join(cfg.benchmarks)})")
    clients = []
    for c in cfg.clients:
        mix = {b: w for b, w in c.domain_mix.items() if b != benchmark}
        if c.home == benchmark or not mix:
            continue  # its expert: the benchmark would still be covered, by the rest of its data
        clients.append({**c.model_dump(), "domain_mix": mix})
    if not clients:
        raise ValueError(f"every client's home is {benchmark!r}; it cannot be held out")
    return _validated(cfg, clients=clients, held_out_client=None, noisy_client=False)


def noisy_world(cfg: WorldConfig, client: str, share: float) -> WorldConfig:
    """The main world with ``share`` of ``client``'s preference labels flipped (the others untouched)."""
    names = [c.name for c in cfg.clients]
    if client not in names:
        raise ValueError(f"claims.noise_client {client!r} is not a training client ({', '.join(names)})")
    clients = [{**c.model_dump(), "label_noise": share if c.name == client else c.label_noise} for c in cfg.clients]
    return _validated(cfg, clients=clients)


def noise_name(share: float) -> str:
    return f"noise{round(share * 100):02d}"


def scenario_worlds(p: Profile) -> dict[str, WorldConfig]:
    """Name -> config of every world the profile uses."""
    worlds = {"main": p.world, "general": general_world(p.world, p.claims.gen_benchmark)}
    if any(method(m).verifiable for m in p.methods):
        # Only the pool's reference answers differ: the clients' data, hence their RMs, are the main world's.
        worlds["verifiable"] = _validated(p.world, pool_reference_share=1.0)
    for share in p.claims.noise_levels:
        worlds[noise_name(share)] = noisy_world(p.world, p.claims.noise_client, share)
    return worlds


def ensure_worlds(p: Profile, ws: Workspace, console: Console) -> dict[str, Path]:
    from services.common.warm_start import ensure_world

    return {name: ensure_world(cfg, ws.world_dir(name), console).root for name, cfg in scenario_worlds(p).items()}


def ensure_sft(p: Profile, ws: Workspace, console: Console) -> dict[str, Any]:
    """The shared SFT start (trained on the main world); its report, reused when policy and SFT config match."""
    from services.common.warm_start import run_sft

    stamp = ws.sft_dir / "sft_report.json"
    want = {"policy": p.policy.model_dump(mode="json"), "sft": p.sft.model_dump(mode="json")}
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if {k: have.get(k) for k in want} == want:
            console.print(f"[green]sft[/] reusing {ws.sft_dir}")
            return have
    return run_sft(ws.world_dir("main"), ws.sft_dir, p.policy, p.sft, eval_examples=p.eval_examples, console=console)


def client_kind(p: Profile, world: Path, client: str) -> str:
    from services.common.data.world import load_world

    return load_world(world).clients[client].rm_arch if p.client_rm_kinds == "spec" else "light"


def rm_settings(p: Profile, ws: Workspace, spec: RMSpec, checkpoint: Path | None = None) -> RewardNodeSettings:
    """Settings of a node serving (or training) ``spec`` (see ``RewardNodeSettings.loopback``)."""
    return RewardNodeSettings.loopback(spec.node_id, spec.kind, checkpoint, data_dir=ws.world_dir(spec.world),
                       model={"backbone": {"path": str(ws.sft_dir)}}, train={**p.rm_train, "seed": spec.seed})


def rm_dir(p: Profile, ws: Workspace, spec: RMSpec) -> Path:
    """The checkpoint folder of ``spec``: keyed by the data it learns from, not by the world's name."""
    from services.reward_node.data import load_node_data

    data = [load_node_data(ws.world_dir(spec.world), c).data_sha256 for c in spec.clients]
    key: dict[str, Any] = {"data": data, "kind": spec.kind, "source": spec.source, "train": p.rm_train,
                           "seed": spec.seed}
    if spec.source == "fedavg":
        key["fedavg"] = [p.fedavg_rounds, p.fedavg_local_epochs]
    if spec.kind == "vlm":
        key["backbone"] = {"policy": p.policy.model_dump(mode="json"), "sft": p.sft.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return ws.rm_root / f"{spec.node_id}-{spec.kind}-s{spec.seed}-{digest}"


def ensure_rm(p: Profile, ws: Workspace, spec: RMSpec) -> tuple[Path, float]:
    """Train ``spec`` unless its checkpoint exists; (checkpoint, held-out pair accuracy)."""
    from services.reward_node.checkpoint import read_metadata
    from services.reward_node.federated import train_fedavg_rm, train_pooled_rm
    from services.reward_node.train import train_rm

    out = rm_dir(p, ws, spec)
    if (out / "metadata.json").is_file():
        return out, float(read_metadata(out)["held_out_accuracy"])
    settings = rm_settings(p, ws, spec, out)
    world = ws.world_dir(spec.world)
    if spec.source == "client":
        result = train_rm(settings)
    elif spec.source == "pooled":
        result = train_pooled_rm(settings, world, spec.clients)
    else:
        result = train_fedavg_rm(settings, world, spec.clients, rounds=p.fedavg_rounds,
                                 local_epochs=p.fedavg_local_epochs)
    return out, result.held_out_accuracy


def rm_specs_for(p: Profile, ws: Workspace, world: str, rms: str, seed: int) -> list[RMSpec]:
    """The reward models a method's ``rms`` field asks for in ``world``."""
    from services.common.data.world import load_world

    w = load_world(ws.world_dir(world))
    clients = tuple(w.training_clients())
    if rms == "none":
        return []
    if rms == "central":
        return [RMSpec("central", world, "light", "pooled", clients, seed)]
    if rms == "fedavg":
        return [RMSpec("fedavg", world, "light", "fedavg", clients, seed)]
    names = clients if rms == "clients" else (rms.partition(":")[2],)
    unknown = [c for c in names if c not in w.clients]
    if unknown:
        raise ValueError(f"world {world!r} has no client {', '.join(unknown)} (clients: {', '.join(w.clients)})")
    return [RMSpec(c, world, client_kind(p, w.root, c), "client", (c,), seed) for c in names]


__all__ = ["RMSpec", "Workspace", "ensure_rm", "ensure_sft", "ensure_worlds", "general_world", "noise_name",
           "noisy_world", "rm_dir", "rm_settings", "rm_specs_for", "scenario_worlds"]
