"""Rows of an outside dataset, whatever it is stored as: the layer under sources.py.

A PATH is one of (docs/data.md has the whole list with examples):
  - a JSONL file (``.jsonl`` / ``.ndjson``; one JSON object per line);
  - a parquet file (``.parquet``; what ``Dataset.to_parquet`` and the Hub write);
  - a folder written by Hugging Face ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict);
  - a folder of split files, ``<split>.jsonl`` / ``<split>.parquet`` / ``<split>-00000-of-00001.parquet``,
    directly inside or under ``data/`` (the Hub's layout);
  - a VQAv2 questions JSON (read by loaders.load_vqa, not here).

Rows are plain dicts as stored: an image column is a path string, raw bytes, a ``{"bytes", "path"}``
struct (datasets' Image feature, read undecoded) or a list of those. Every row knows where it came
from (``where(i)``: ``file:line`` for JSONL, ``file [split 'x', row i]`` otherwise), so an error can
name the file and the record.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.data.loaders import jsonl_objects

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
PARQUET_SUFFIXES = (".parquet",)


class DatasetError(ValueError):
    """An outside dataset that cannot be used; the message names the file, the record and the field."""


@dataclass
class Part:
    """One file (or one save_to_disk split) of a split: its rows and how to name each row."""

    path: Path
    rows: list[dict[str, Any]]
    lines: list[int] | None = None  # 1-based JSONL line of each row; None: rows are numbered from 0
    label: str = ""  # save_to_disk: "split 'train'"
    base: Path | None = None  # relative image paths resolve against this folder (set by read_table)

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.path}:{self.lines[i]}"
        return f"{self.path} [{self.label + ', ' if self.label else ''}row {i}]"


@dataclass
class Table:
    """The rows of one split of a dataset. A relative image path resolves against the folder of the file
    that names it (the world root for a file inside a MoR world), or the save_to_disk folder."""

    source: Path
    format: str  # jsonl | parquet | save_to_disk | split_files
    split: str
    splits: tuple[str, ...]
    parts: list[Part] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(p.rows) for p in self.parts)

    def rows(self) -> Iterator[tuple[str, dict[str, Any], Path]]:
        """(where, row, base folder of its relative image paths) for every row, in order."""
        for part in self.parts:
            base = part.base or part.path.resolve().parent
            for i, row in enumerate(part.rows):
                yield part.where(i), row, base

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for part in self.parts:
            for row in part.rows[:50]:
                seen.update(dict.fromkeys(row))
        return list(seen)


def world_root(p: Path) -> Path | None:
    """The world a file sits in (nearest parent with manifest.json), if any."""
    for parent in p.resolve().parents:
        if (parent / "manifest.json").is_file():
            return parent
    return None


def split_name(f: Path) -> str:
    """The split a file holds: its name without suffix and Hub shard tail (train-00000-of-00002 -> train)."""
    return _SHARD.sub("", f.stem)


def is_save_to_disk(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def split_files(p: Path) -> dict[str, list[Path]]:
    """Split name -> files, for a folder of split files (also under data/, the Hub layout)."""
    out: dict[str, list[Path]] = {}
    for folder in (p, p / "data"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
                out.setdefault(split_name(f), []).append(f)
    return out


def choose_split(available: tuple[str, ...], split: str | None, default: tuple[str, ...], source: Path) -> str:
    """The requested split, else the first default that exists, else the only one."""
    if split is not None:
        if split not in available:
            raise DatasetError(f"{source}: no split {split!r} (splits: {', '.join(available)})")
        return split
    for d in default:
        if d in available:
            return d
    if len(available) == 1:
        return available[0]
    raise DatasetError(f"{source}: holds splits {', '.join(available)}; choose one with --split")


def read_table(path: str | Path, split: str | None = None, default: tuple[str, ...] = ("test",)) -> Table:
    """The rows of one split of the dataset at ``path`` (see the module docstring).

    ``split`` None picks the first of ``default`` that exists, else the only split there is. A single
    file is one split, named after the file (``train.jsonl`` -> ``train``); asking for another name
    is an error.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        fmt = _file_format(p)
        name = split_name(p)
        chosen = choose_split((name,), split, default, p)
        return Table(p, fmt, chosen, (name,), [_read_file(p)])
    if (p / "manifest.json").is_file():
        raise DatasetError(f"{p} is a generated MoR world, not a dataset: pass it as a world (--world, world:, "
                           "data_dir:), or name one of its files (e.g. benchmarks/shapes/test.jsonl)")
    if is_save_to_disk(p):
        return _read_saved(p, split, default)
    files = split_files(p)
    if not files:
        raise DatasetError(
            f"{p}: not a dataset folder and not a MoR world (no save_to_disk files, no <split>.jsonl or "
            "<split>.parquet, no manifest.json)"
        )
    chosen = choose_split(tuple(files), split, default, p)
    return Table(p, "split_files", chosen, tuple(files), [_read_file(f) for f in files[chosen]])


def _file_format(p: Path) -> str:
    if p.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if p.suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DatasetError(f"{p}: unknown file type {p.suffix!r} (JSONL .jsonl, parquet .parquet, or VQAv2 .json)")


def _read_file(p: Path) -> Part:
    part = _read_jsonl(p) if _file_format(p) == "jsonl" else _read_parquet(p)
    part.base = world_root(p) or p.resolve().parent
    return part


def _read_jsonl(p: Path) -> Part:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    with p.open("r", encoding="utf-8") as fh:
        for lineno, obj in jsonl_objects(p, fh, DatasetError):
            rows.append(obj)
            lines.append(lineno)
    if not rows:
        raise DatasetError(f"{p}: no records")
    return Part(p, rows, lines)


def _read_parquet(p: Path) -> Part:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()  # datasets' Image feature comes back as {"bytes", "path"}
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a broken file
        raise DatasetError(f"{p}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise DatasetError(f"{p}: no records")
    return Part(p, rows)


def _read_saved(p: Path, split: str | None, default: tuple[str, ...]) -> Table:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for a broken folder
        raise DatasetError(f"{p}: cannot read the save_to_disk folder ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = choose_split(tuple(loaded), split, default, p)
        ds, splits, label = loaded[chosen], tuple(loaded), f"split {chosen!r}"
    else:
        name = str(loaded.split) if loaded.split is not None else "train"
        chosen = choose_split((name,), split, default, p)
        ds, splits, label = loaded, (name,), ""
    # The arrow format hands images over undecoded ({"bytes", "path"}), as they are stored.
    rows = ds.with_format("arrow")[:].to_pylist() if len(ds) else []
    if not rows:
        raise DatasetError(f"{p}: {label or 'the dataset'} holds no records")
    return Table(p, "save_to_disk", chosen, splits, [Part(p, rows, None, label, p.resolve())])


__all__ = ["DatasetError", "Part", "Table", "choose_split", "is_save_to_disk", "read_table", "split_files", "world_root"]
