"""The first stage: the synthetic federated world, made (or reused, see cache.py) and summarised."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.common.data.config import WorldConfig
from services.common.data.world import FORMAT_VERSION, MANIFEST, World, load_world
from services.common.data.world_writer import make_world
from services.pipeline import cache


def world_config(section: WorldConfig, seed: int | None = None, quick: bool = False) -> WorldConfig:
    """The world to make: the stack's section, or a seconds-to-make one for smoke runs."""
    if quick:
        return WorldConfig.small(seed=section.seed if seed is None else seed)
    return section if seed is None else section.model_copy(update={"seed": seed})


def world_hash(root: Path) -> str:
    """The content hash of a world: its manifest lists the SHA-256 of every other file."""
    return cache.content_hash(Path(root) / MANIFEST)


def ensure_world(cfg: WorldConfig, path: Path, console: Console) -> World:
    """The world of ``cfg`` at ``path``: reused when it was made from the same config in the same
    format version, else (re)made."""
    t0 = time.perf_counter()
    if cache.ensure(path, {"world": cfg.model_dump(mode="json"), "format_version": FORMAT_VERSION},
                    lambda: make_world(cfg, path, progress=True, overwrite=True)):
        console.print(f"[green]world[/] made {path} in {time.perf_counter() - t0:.1f}s")
    else:
        console.print(f"[green]world[/] reusing {path} (same config and seed)")
    return load_world(path)


def world_summary(world: World) -> Table:
    """A table of what a world holds."""
    table = Table(title=f"world {world.root} (seed {world.config.seed})")
    for col in ("part", "name", "train", "test", "notes"):
        table.add_column(col)
    for b in world.benchmarks:
        table.add_row("benchmark", b, str(len(world.examples(b, "train"))), str(len(world.examples(b, "test"))), "")
    for name, spec in world.clients.items():
        mix = ", ".join(f"{b} {w:g}" for b, w in spec.domain_mix.items())
        notes = f"style {spec.style}, rm {spec.rm_arch}, {mix}"
        if spec.label_noise:
            notes += f", {spec.label_noise:.0%} flipped"
        if world.is_held_out(name):
            notes += ", held out"
        table.add_row("client", name, str(len(world.pairs(name, "train"))), str(len(world.pairs(name, "test"))), notes)
    table.add_row("server", "prompt pool", str(len(world.prompt_pool())), "", "no client data")
    table.add_row("server", "router pairs", str(len(world.router_pairs())), "", f"{world.config.router_pair_styles} server oracle")
    return table


__all__ = ["ensure_world", "world_config", "world_hash", "world_summary"]
