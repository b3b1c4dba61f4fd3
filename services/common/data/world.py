"""A synthetic federated VQA world on disk: load one back and read it. The format is in FORMAT.md;
world_writer.make_world writes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import PIL

from .config import ClientSpec, WorldConfig
from .oracle import ClientOracle, ServerOracle
from .prefs import flip
from .records import SPLITS, PoolPrompt, PreferencePair, VQAExample

FORMAT_NAME = "mor-world"
FORMAT_VERSION = 2  # 2: the router pairs are server/router_prefs.jsonl, ids router-<NNNNN>
MANIFEST = "manifest.json"
LABELLED = "labelled.jsonl"  # a client's private labelled examples (VQAExample lines)


class WorldFormatError(ValueError):
    """A folder that is not a MoR world, has another format version, or fails its checksums."""


class World:
    """A world on disk: examples by benchmark/split, client specs and pairs, prompt pool, router pairs.

    Records are read lazily and cached. Paths in records are relative to `root`; `image_path` resolves them.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.config = WorldConfig.model_validate(manifest["config"])
        self._cache: dict[tuple[str, ...], Any] = {}

    # -- benchmarks ---------------------------------------------------------------------------
    @property
    def benchmarks(self) -> list[str]:
        """Benchmark names, sorted (the generation order)."""
        return sorted(self.config.benchmarks)

    def examples(self, benchmark: str | None = None, split: str = "train") -> list[VQAExample]:
        """Examples of one benchmark (or of all, in sorted benchmark order) in a split."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; supported: {list(SPLITS)}")
        names = self.benchmarks if benchmark is None else [benchmark]
        out: list[VQAExample] = []
        for b in names:
            if b not in self.config.benchmarks:
                raise KeyError(f"benchmark {b!r} is not in this world; it has {self.benchmarks}")
            out.extend(self._read(("bench", b, split), f"benchmarks/{b}/{split}.jsonl", VQAExample))
        return out

    def example(self, example_id: str) -> VQAExample:
        index = self._cache.get(("index",))
        if index is None:
            index = {ex.id: ex for s in SPLITS for ex in self.examples(None, s)}
            self._cache[("index",)] = index
        try:
            return index[example_id]
        except KeyError:
            raise KeyError(f"no example {example_id!r} in {self.root}") from None

    def sft_examples(self, benchmark: str | None = None) -> list[VQAExample]:
        """Train examples used by no client pair or labelled example, pool prompt or router pair
        (the server's own small labelled set, for the SFT warm start)."""
        used = {p.example_id for c in self.clients for s in SPLITS for p in self.pairs(c, s)}
        used |= {ex.id for c in self.clients for ex in self.labelled(c)}
        used |= {p.example_id for p in self.prompt_pool()} | {p.example_id for p in self.router_pairs()}
        return [ex for ex in self.examples(benchmark, "train") if ex.id not in used]

    # -- images -------------------------------------------------------------------------------
    def image_path(self, rel: str) -> Path:
        return self.root / rel

    def image_bytes(self, rel: str) -> bytes:
        return self.image_path(rel).read_bytes()

    def load_image(self, rel: str) -> PIL.Image.Image:
        from PIL import Image

        with Image.open(self.image_path(rel)) as im:
            return im.convert("RGB")

    # -- clients ------------------------------------------------------------------------------
    @property
    def clients(self) -> dict[str, ClientSpec]:
        """Every client (training, noisy, held-out) by name, with its full spec (label noise included)."""
        return {c.name: c for c in self.config.all_clients()}

    def training_clients(self) -> list[str]:
        return [n for n in self.clients if not self.is_held_out(n)]

    def is_held_out(self, client: str) -> bool:
        self._need_client(client)
        ho = self.config.held_out_client
        return ho is not None and ho.name == client

    def pairs(self, client: str, split: str = "train", clean: bool = False) -> list[PreferencePair]:
        """A client's preference pairs as stored (noisy labels included); clean=True undoes the flips."""
        self._need_client(client)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; supported: {list(SPLITS)}")
        pairs = self._read(("pairs", client, split), f"clients/{client}/prefs_{split}.jsonl", PreferencePair)
        if not clean:
            return pairs
        flipped = set(self.flips(client)[split])
        return [flip(p) if p.id in flipped else p for p in pairs]

    def labelled(self, client: str) -> list[VQAExample]:
        """The client's private labelled examples ([] for a world made before they existed)."""
        self._need_client(client)
        if not (self.root / "clients" / client / LABELLED).is_file():
            return []
        return self._read(("labelled", client), f"clients/{client}/{LABELLED}", VQAExample)

    def flips(self, client: str) -> dict[str, list[str]]:
        """Truth: ids of the client's pairs whose label was flipped, per split."""
        self._need_client(client)
        data = json.loads((self.root / "truth" / f"{client}_flips.json").read_text(encoding="utf-8"))
        return {s: list(data[s]) for s in SPLITS}

    def oracle(self, client: str) -> ClientOracle:
        self._need_client(client)
        return ClientOracle(self.clients[client])

    def server_oracle(self) -> ServerOracle:
        """The oracle that labelled the router pairs (neutral, or each domain's conventional style)."""
        return ServerOracle(self.config.server_oracle_styles())

    # -- server -------------------------------------------------------------------------------
    def prompt_pool(self) -> list[PoolPrompt]:
        return self._read(("pool",), "server/prompt_pool.jsonl", PoolPrompt)

    def router_pairs(self) -> list[PreferencePair]:
        return self._read(("router",), "server/router_prefs.jsonl", PreferencePair)

    # -- integrity ----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Problems found by re-hashing every file the manifest lists (and finding unlisted ones)."""
        listed: dict[str, str] = self.manifest["files"]
        problems = []
        for rel, sha in listed.items():
            p = self.root / rel
            if not p.is_file():
                problems.append(f"{rel}: missing")
            elif hashlib.sha256(p.read_bytes()).hexdigest() != sha:
                problems.append(f"{rel}: checksum mismatch")
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and rel != MANIFEST and rel not in listed:
                problems.append(f"{rel}: not in the manifest")
        return problems

    def _need_client(self, client: str) -> None:
        if client not in self.clients:
            raise KeyError(f"no client {client!r} in this world; clients: {list(self.clients)}")

    def _read(self, key: tuple[str, ...], rel: str, cls: type) -> list[Any]:
        if key not in self._cache:
            from .records import read_records

            self._cache[key] = read_records(self.root / rel, cls)
        return self._cache[key]


def load_world(out_dir: str | Path, verify: bool = False) -> World:
    """Open a world folder; WorldFormatError when it is not a world, has another format version or
    (verify=True) a file fails its checksum."""
    root = Path(out_dir)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise WorldFormatError(f"{root} is not a MoR world: no such folder")
    if not mpath.is_file():
        raise WorldFormatError(
            f"{root} is not a MoR world: {MANIFEST} is missing (make one with `mor data make`)"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WorldFormatError(f"{mpath}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise WorldFormatError(f"{mpath}: not a MoR world manifest (format is not {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise WorldFormatError(
            f"{mpath}: world format version {version!r}, this code reads version {FORMAT_VERSION}; "
            "regenerate the world with `mor data make`"
        )
    world = World(root, manifest)
    if verify:
        problems = world.verify()
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
            raise WorldFormatError(f"{root}: {len(problems)} file(s) fail the manifest: {shown}")
    return world
