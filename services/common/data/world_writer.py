"""Make a synthetic federated VQA world on disk (world.py reads it back). The format is in FORMAT.md.

make_world writes into a temporary sibling folder and renames it into place at the end, so a world
folder is either complete (with its manifest) or absent. Same config -> byte-identical tree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import ClientSpec, WorldConfig
from .generate import SPLIT_INDEX, generate_examples, stream
from .oracle import ClientOracle, PreferenceOracle, ServerOracle
from .prefs import flip, flip_ids, make_pair
from .records import SPLITS, PoolPrompt, PreferencePair, VQAExample, write_records
from .world import FORMAT_NAME, FORMAT_VERSION, LABELLED, MANIFEST

SERVER_CLIENT = "server"


def json_bytes(obj: Any) -> bytes:
    """Pretty JSON with sorted keys and fixed separators (the manifest, client.json, truth files)."""
    return (
        json.dumps(obj, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=False) + "\n"
    ).encode()


class _Tree:
    """Writes files under a root and remembers each one's sha256 (relative POSIX path -> hex)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sha: dict[str, str] = {}

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.sha[rel] = hashlib.sha256(data).hexdigest()


class _Allocator:
    """Hands out disjoint train examples per benchmark, in a seeded order (clients, then server)."""

    def __init__(self, seed: int, train: dict[str, list[VQAExample]]) -> None:
        self.order = {
            b: [exs[int(i)] for i in stream(seed, f"alloc:{b}").permutation(len(exs))]
            for b, exs in train.items()
        }
        self.cursor = {b: 0 for b in train}

    def take(self, benchmark: str, n: int) -> list[VQAExample]:
        start = self.cursor[benchmark]
        self.cursor[benchmark] = start + n
        got = self.order[benchmark][start : start + n]
        if len(got) != n:  # the config validator makes this unreachable
            raise ValueError(f"benchmark {benchmark!r}: train split exhausted")
        return got

    def used(self) -> dict[str, int]:
        return dict(self.cursor)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, disable=not enabled, transient=False) as p:
        yield p


def _shuffled(items: list[VQAExample], rng: np.random.Generator) -> list[VQAExample]:
    return [items[int(i)] for i in rng.permutation(len(items))]


def _label(
    examples: Iterable[VQAExample],
    prefix: str,
    client: str,
    oracle: PreferenceOracle,
    rng: np.random.Generator,
    margin: float,
    progress: Progress | None = None,
    task: Any = None,
    kind_mix: dict[str, float] | None = None,
) -> list[PreferencePair]:
    out = []
    for k, ex in enumerate(examples):
        out.append(make_pair(f"{prefix}-{k:05d}", client, ex, oracle, rng, margin, kind_mix))
        if progress is not None:
            progress.advance(task)
    return out


def _client_view(spec: ClientSpec, held_out: bool) -> dict[str, Any]:
    """What a client's own folder says about it: no label-noise truth."""
    view = spec.model_dump(mode="json", exclude={"label_noise"})
    view["held_out"] = held_out
    return view


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} is not empty; pass overwrite=True (--force) to replace a world there"
        )
    if not (out_dir / MANIFEST).is_file():
        raise FileExistsError(f"{out_dir} is not empty and is not a MoR world; refusing to replace it")


def make_world(
    cfg: WorldConfig, out_dir: str | Path, progress: bool = True, *, overwrite: bool = False
) -> Path:
    """Generate the world described by cfg into out_dir and return the manifest path.

    out_dir must be absent or empty, or (with overwrite=True) hold an earlier world, which is replaced.
    """
    out_dir = Path(out_dir)
    _prepare_target(out_dir, overwrite)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        manifest = _generate(cfg, _Tree(tmp), progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old"
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir / manifest


def _generate(cfg: WorldConfig, tree: _Tree, show: bool) -> str:
    seed = cfg.seed
    examples: dict[str, dict[str, list[VQAExample]]] = {}
    with _progress(show) as bar:
        for b in sorted(cfg.benchmarks):  # sorted: a config read back from a manifest has sorted keys
            counts = cfg.benchmarks[b]
            examples[b] = {}
            for split in SPLITS:
                n = getattr(counts, split)
                task = bar.add_task(f"{b}/{split}", total=n)
                items = []
                for g in generate_examples(
                    b,
                    split,
                    n,
                    seed=seed,
                    image_size=cfg.image_size,
                    n_references=cfg.n_reference_answers,
                    annotator_noise=cfg.annotator_noise,
                ):
                    tree.put(g.example.image, g.png)
                    items.append(g.example)
                    bar.advance(task)
                examples[b][split] = items
                tree.put(f"benchmarks/{b}/{split}.jsonl", write_records(items))

        alloc = _Allocator(seed, {b: v["train"] for b, v in examples.items()})
        held_out = cfg.held_out_client.name if cfg.held_out_client is not None else None
        noisy = cfg.noisy_spec()
        client_counts: dict[str, Any] = {}
        for spec in cfg.all_clients():
            oracle = ClientOracle(spec)
            flips: dict[str, list[str]] = {}
            for split in SPLITS:
                per = spec.pairs_per_benchmark(split)
                if split == "train":
                    chosen = [ex for b, n in per.items() for ex in alloc.take(b, n)]
                else:
                    chosen = [
                        ex
                        for b, n in per.items()
                        for ex in _shuffled(examples[b]["test"], stream(seed, f"testpick:{spec.name}:{b}"))[
                            :n
                        ]
                    ]
                rng = stream(seed, f"client:{spec.name}", SPLIT_INDEX[split])
                task = bar.add_task(f"{spec.name}/{split} pairs", total=len(chosen))
                pairs = _label(
                    _shuffled(chosen, rng),
                    f"{spec.name}-{split}",
                    spec.name,
                    oracle,
                    rng,
                    cfg.pair_margin,
                    bar,
                    task,
                    spec.kind_mix,
                )
                flipped = flip_ids(
                    [p.id for p in pairs],
                    spec.label_noise,
                    stream(seed, f"flip:{spec.name}", SPLIT_INDEX[split]),
                )
                fset = set(flipped)
                pairs = [flip(p) if p.id in fset else p for p in pairs]
                flips[split] = flipped
                tree.put(f"clients/{spec.name}/prefs_{split}.jsonl", write_records(pairs))
            labelled = [ex for b, n in spec.labelled_per_benchmark().items() for ex in alloc.take(b, n)]
            tree.put(f"clients/{spec.name}/{LABELLED}", write_records(labelled))
            tree.put(
                f"clients/{spec.name}/client.json", json_bytes(_client_view(spec, spec.name == held_out))
            )
            tree.put(
                f"truth/{spec.name}_flips.json",
                json_bytes({"client": spec.name, "label_noise": spec.label_noise, **flips}),
            )
            client_counts[spec.name] = {
                "held_out": spec.name == held_out,
                "noisy": noisy is not None and spec.name == noisy.name,
                "pairs": {s: getattr(spec, f"n_pairs_{s}") for s in SPLITS},
                "labelled": len(labelled),
                "flipped": {s: len(flips[s]) for s in SPLITS},
                "style": spec.style,
                "rm_arch": spec.rm_arch,
            }

        pool_ex = [ex for b, n in cfg.server_counts(cfg.prompt_pool_size).items() for ex in alloc.take(b, n)]
        rng = stream(seed, "server:pool")
        pool_ex = _shuffled(pool_ex, rng)
        n_ref = int(round(cfg.pool_reference_share * len(pool_ex)))
        with_refs = set(int(i) for i in rng.choice(len(pool_ex), size=n_ref, replace=False))
        pool = [
            PoolPrompt(
                id=f"pool-{k:05d}",
                benchmark=ex.benchmark,
                image=ex.image,
                question=ex.question,
                answers=list(ex.answers) if k in with_refs else [],
                answer_type=ex.answer_type,
                example_id=ex.id,
            )
            for k, ex in enumerate(pool_ex)
        ]
        tree.put("server/prompt_pool.jsonl", write_records(pool))

        router_ex = [ex for b, n in cfg.server_counts(cfg.router_pairs_size).items() for ex in alloc.take(b, n)]
        rng = stream(seed, "server:calibration")  # the stream's name of format 1: the same pairs as then
        task = bar.add_task("server router pairs", total=len(router_ex))
        router_pairs = _label(
            _shuffled(router_ex, rng), "router", SERVER_CLIENT, ServerOracle(cfg.server_oracle_styles()), rng, cfg.pair_margin, bar, task
        )
        tree.put("server/router_prefs.jsonl", write_records(router_pairs))

    used = alloc.used()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": {"numpy": np.__version__, "pillow": PIL.__version__},
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "benchmarks": {b: {s: len(v[s]) for s in SPLITS} for b, v in examples.items()},
            "clients": client_counts,
            "prompt_pool": len(pool),
            "router_pairs": len(router_pairs),
            "images": sum(len(v[s]) for v in examples.values() for s in SPLITS),
            "sft_train": {b: len(examples[b]["train"]) - used[b] for b in examples},
        },
        "files": dict(sorted(tree.sha.items())),
    }
    tree.put(MANIFEST, json_bytes(manifest))
    return MANIFEST
