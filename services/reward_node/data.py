"""The node's own preference data, read from its private data folder (training only, never served).

``data_dir`` is either a whole world (``manifest.json`` inside; the node's pairs are
``clients/<node_id>/``) or one client's folder inside a world (``<world>/clients/<name>/``, as a
node that holds only its own files would have it); image paths in the pairs are relative to the
world root in both cases. The held-out split is the client's ``prefs_test.jsonl``. An optional
``labelled.jsonl`` (VQAExample lines) holds the organisation's own labelled examples, which
grounding (services.reward_node.grounding) trains on before the pairs.

``data_dir`` may also be an outside preference dataset the organisation owns (docs/data.md): TRL's
prompt/chosen/rejected/images or a plain JSONL of image/question/chosen/rejected, as one file, a
save_to_disk folder or a folder of split files, with images wherever its paths say (or embedded).
Its ``train`` split (else its only split) trains; its ``test`` (or validation) split is held out,
else a seeded ``held_out_fraction`` of the pairs is.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from services.common.data.records import PreferencePair, RecordError, VQAExample, read_records
from services.common.data.sources import DatasetError, ImageSource, read_prefs
from services.common.data.tables import is_save_to_disk, split_files

SPLITS = ("train", "test")
HELD_OUT_SPLITS = ("test", "validation", "val", "dev")  # an outside dataset's held-out split, first found
LABELLED = "labelled.jsonl"  # optional: the organisation's labelled examples (VQAExample lines)


class DataError(ValueError):
    """The node's data folder is missing, incomplete or unreadable; the message names the path."""


@dataclass
class NodeData:
    """A node's preference pairs per split, with lazy image loading and a hash of the data files."""

    node_id: str
    pairs: dict[str, list[PreferencePair]]
    image_root: Path
    data_sha256: str
    client_info: dict[str, Any] = field(default_factory=dict)
    labelled: list[VQAExample] = field(default_factory=list)  # the node's own labelled examples (grounding)
    images: ImageSource | None = None  # an outside dataset's images (keys are its pairs' image fields)
    _images: dict[str, Image.Image] = field(default_factory=dict, repr=False)

    def image(self, rel: str) -> Image.Image:
        """The RGB image of a pair (cached: pairs of one example share it)."""
        if rel not in self._images:
            path = self.image_root / rel
            try:
                if self.images is not None:
                    self._images[rel] = self.images.load_image(rel)
                else:
                    with Image.open(path) as im:
                        self._images[rel] = im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read image ({exc})") from None
        return self._images[rel]


def _client_dir(data_dir: Path, node_id: str) -> tuple[Path, Path]:
    """(client folder, world root) for either layout."""
    if (data_dir / "manifest.json").is_file():
        client = data_dir / "clients" / node_id
        if not client.is_dir():
            known = sorted(p.name for p in (data_dir / "clients").glob("*") if p.is_dir())
            raise DataError(f"data_dir: world {data_dir} has no client {node_id!r} (clients: {', '.join(known)})")
        return client, data_dir
    if (data_dir / "prefs_train.jsonl").is_file():
        return data_dir, data_dir.resolve().parents[1]
    raise DataError(
        f"data_dir: {data_dir} is neither a world (manifest.json), a client folder (prefs_train.jsonl) nor a "
        "preference dataset (docs/data.md)"
    )


def is_pref_dataset(root: Path) -> bool:
    """An outside preference dataset rather than a world or a world's client folder."""
    if root.is_file():
        return True
    if (root / "manifest.json").is_file() or (root / "prefs_train.jsonl").is_file():
        return False
    return is_save_to_disk(root) or bool(split_files(root))


def load_pref_dataset(root: Path, node_id: str, held_out_fraction: float = 0.1, seed: int = 0) -> NodeData:
    """A node's pairs from an outside preference dataset (see the module docstring)."""
    try:
        train = read_prefs(root, None, default=("train",), client=node_id)
        held = next((s for s in HELD_OUT_SPLITS if s in train.splits and s != train.split), None)
        if held is not None:
            test = read_prefs(root, held, client=node_id)
            pairs = {"train": train.pairs, "test": test.pairs}
            images: ImageSource = _Both(train.images, test.images)
            digest = hashlib.sha256(f"{train.sha256}\0{test.sha256}".encode()).hexdigest()
        else:
            if len(train.pairs) < 2:
                raise DataError(f"data_dir: {root} holds {len(train.pairs)} pair(s); training needs a train and a "
                                "held-out share")
            order = list(range(len(train.pairs)))
            random.Random(seed).shuffle(order)
            n_test = min(len(order) - 1, max(1, round(held_out_fraction * len(order))))
            test_idx = set(order[:n_test])
            pairs = {"train": [p for i, p in enumerate(train.pairs) if i not in test_idx],
                     "test": [p for i, p in enumerate(train.pairs) if i in test_idx]}
            images, digest = train.images, train.sha256
    except DatasetError as exc:
        raise DataError(f"data_dir: {exc}") from None
    info = {"source": str(root), "format": train.format, "train_split": train.split,
            "held_out": held if held is not None else f"{held_out_fraction:g} of {train.split} (seed {seed})"}
    return NodeData(node_id, pairs, root.resolve().parent if root.is_file() else root.resolve(), digest, info,
                    images=images)


class _Both:
    """Images of a train and a held-out split (distinct stores: embedded keys are content hashes)."""

    def __init__(self, a: ImageSource, b: ImageSource) -> None:
        self._a, self._b = a, b

    def load_image(self, rel: str) -> Image.Image:
        try:
            return self._a.load_image(rel)
        except (KeyError, OSError):
            return self._b.load_image(rel)

    def image_bytes(self, rel: str) -> bytes:
        try:
            return self._a.image_bytes(rel)
        except (KeyError, OSError):
            return self._b.image_bytes(rel)


def load_node_data(data_dir: str | Path, node_id: str, held_out_fraction: float = 0.1, seed: int = 0) -> NodeData:
    """Read a node's train and held-out pairs; DataError names what is missing. ``held_out_fraction``
    and ``seed`` apply only to an outside preference dataset without a held-out split."""
    root = Path(data_dir)
    if root.exists() and is_pref_dataset(root):
        return load_pref_dataset(root, node_id, held_out_fraction, seed)
    if not root.is_dir():
        raise DataError(f"data_dir: no such folder: {root}")
    client, world_root = _client_dir(root, node_id)
    h = hashlib.sha256()
    pairs: dict[str, list[PreferencePair]] = {}
    for split in SPLITS:
        path = client / f"prefs_{split}.jsonl"
        if not path.is_file():
            raise DataError(f"data_dir: {path} is missing")
        h.update(split.encode() + b"\0" + path.read_bytes() + b"\0")
        try:
            pairs[split] = read_records(path, PreferencePair)
        except RecordError as exc:
            raise DataError(str(exc)) from None
        if not pairs[split]:
            raise DataError(f"data_dir: {path} holds no pairs")
    labelled: list[VQAExample] = []
    lab_path = client / LABELLED
    if lab_path.is_file():
        h.update(b"labelled\0" + lab_path.read_bytes() + b"\0")
        try:
            labelled = read_records(lab_path, VQAExample)
        except RecordError as exc:
            raise DataError(str(exc)) from None
    info_path = client / "client.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    return NodeData(node_id, pairs, world_root, h.hexdigest(), info, labelled)


__all__ = ["DataError", "NodeData", "SPLITS", "is_pref_dataset", "load_node_data", "load_pref_dataset"]
