"""Everything the runs share, built once under the work folder by the pipeline's stages.

    <work>/worlds/<name>/   main, general (no client covers the held-out benchmark), noise<NN>
    <work>/sft/             the one SFT start of every method and seed
    <work>/rm/<node>-<kind>-s<seed>-<key>/   reward models; <key> is the start of the digest of the
                            RM's inputs (its data's content hash, training settings and seed,
                            backbone), so a client whose pairs are the same in two worlds (the clean
                            clients of the noise worlds) trains once

Each is reused under the pipeline's one cache rule (services/pipeline/cache.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from services.common.config import RewardNodeSettings
from services.common.data.config import ClientSpec, WorldConfig
from services.common.data.world import load_world
from services.pipeline import cache
from services.pipeline.reward_models import ensure_rm, rm_inputs
from services.pipeline.sft import ensure_sft
from services.pipeline.table.profiles import Profile, method
from services.pipeline.world import ensure_world


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


def home_expert(cfg: WorldConfig, benchmark: str) -> ClientSpec | None:
    """The training client whose home is ``benchmark`` (None when no client's is)."""
    return next((c for c in cfg.clients if c.home == benchmark), None)


def general_world(cfg: WorldConfig, benchmark: str) -> WorldConfig:
    """The main world where no training client covers ``benchmark``: the others drop it from their
    domain mix, and its home expert leaves the training clients to become the world's held-out client
    (evaluated, not served; the adaptability claim lets its main-world node join mid-run). The
    server's prompt pool and router pairs still span all benchmarks; no noisy client."""
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
    expert = home_expert(cfg, benchmark)
    return _validated(cfg, clients=clients, held_out_client=expert.model_dump() if expert else None,
                      noisy_client=False)


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


def prepare_worlds(p: Profile, ws: Workspace, console: Console, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Make (or reuse) the profile's worlds, or only those ``names``."""
    return {name: ensure_world(cfg, ws.world_dir(name), console).root for name, cfg in scenario_worlds(p).items()
            if names is None or name in names}


def prepare_sft(p: Profile, ws: Workspace, console: Console) -> dict[str, Any]:
    """The shared SFT start (trained on the main world); its report."""
    return ensure_sft(load_world(ws.world_dir("main")), ws.sft_dir, p.policy, p.sft, eval_examples=p.eval_examples,
                      console=console)


def client_kind(p: Profile, world: Path, client: str) -> str:
    return load_world(world).clients[client].rm_arch if p.client_rm_kinds == "spec" else "light"


def rm_settings(p: Profile, ws: Workspace, spec: RMSpec, checkpoint: Path | None = None) -> RewardNodeSettings:
    """Settings of a node serving (or training) ``spec`` (see ``RewardNodeSettings.loopback``)."""
    return RewardNodeSettings.loopback(spec.node_id, spec.kind, checkpoint, data_dir=ws.world_dir(spec.world),
                       model={"backbone": {"path": str(ws.sft_dir)}}, train={**p.rm_train, "seed": spec.seed})


def _fedavg(p: Profile, spec: RMSpec) -> tuple[int, int] | None:
    return (p.fedavg_rounds, p.fedavg_local_epochs) if spec.source == "fedavg" else None


def rm_dir(p: Profile, ws: Workspace, spec: RMSpec) -> Path:
    """The checkpoint folder of ``spec``: named by the digest of its inputs (reward_models.rm_inputs),
    which hold the content of the data it learns from, not the world's name."""
    fedavg = _fedavg(p, spec)
    inputs = rm_inputs(rm_settings(p, ws, spec), ws.world_dir(spec.world), spec.clients, spec.source,
                       **({"fedavg": list(fedavg)} if fedavg else {}))
    return ws.rm_root / f"{spec.node_id}-{spec.kind}-s{spec.seed}-{cache.digest(inputs)[:12]}"


def prepare_rm(p: Profile, ws: Workspace, spec: RMSpec) -> tuple[Path, float]:
    """Train ``spec`` unless it is current in its folder; (checkpoint, held-out pair accuracy)."""
    settings = rm_settings(p, ws, spec, rm_dir(p, ws, spec))
    return ensure_rm(settings, ws.world_dir(spec.world), spec.clients, spec.source, fedavg=_fedavg(p, spec))


def rm_specs_for(p: Profile, ws: Workspace, world: str, rms: str, seed: int) -> list[RMSpec]:
    """The reward models a method's ``rms`` field asks for in ``world``."""
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


__all__ = ["RMSpec", "Workspace", "general_world", "noise_name", "noisy_world", "prepare_rm", "prepare_sft",
           "prepare_worlds", "rm_dir", "rm_settings", "rm_specs_for", "scenario_worlds"]
