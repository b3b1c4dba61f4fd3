"""The node's own preference data, read from its private data folder (training only, never served).

``data_dir`` is either a whole world (``manifest.json`` inside; the node's pairs are
``clients/<node_id>/``) or one client's folder inside a world (``<world>/clients/<name>/``, as a
node that holds only its own files would have it); image paths in the pairs are relative to the
world root in both cases. The held-out split is the client's ``prefs_test.jsonl``. An optional
``labelled.jsonl`` (VQAExample lines) holds the organisation's own labelled examples, which
grounding (services.reward_node.grounding) trains on before the pairs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from services.common.data.records import PreferencePair, RecordError, VQAExample, read_records

SPLITS = ("train", "test")
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
    _images: dict[str, Image.Image] = field(default_factory=dict, repr=False)

    def image(self, rel: str) -> Image.Image:
        """The RGB image of a pair (cached: pairs of one example share it)."""
        if rel not in self._images:
            path = self.image_root / rel
            try:
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
        f"data_dir: {data_dir} is neither a world (manifest.json) nor a client folder (prefs_train.jsonl)"
    )


def load_node_data(data_dir: str | Path, node_id: str) -> NodeData:
    """Read a node's train and held-out pairs; DataError names what is missing."""
    root = Path(data_dir)
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


__all__ = ["DataError", "NodeData", "SPLITS", "load_node_data"]
