"""A trained RM on disk: safetensors weights, architecture-specific extras, and metadata.json.

    <checkpoint>/
      model.safetensors       the RM's persistent tensors (light: CNN + head; vlm: head), plus the
                              output standardisation
      backbone/               vlm only: the merged VLM as a standard HF folder
      prototype.safetensors   optional: mean MiniLM embedding of the node's training prompts
      metadata.json           format, architecture, model_version, data hash, held-out accuracy,
                              score statistics, sha256 of every other file

Nothing here holds preference data: no prompts, answers or labels, only a sha256 of the data
files, aggregate statistics and weights. The folder is written to a temporary sibling and renamed
into place, so a checkpoint is either complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from services.reward_node.rm import RewardModel, rm_class

FORMAT = "mor-rm"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
PROTOTYPE = "prototype.safetensors"
METADATA = "metadata.json"


class CheckpointError(ValueError):
    """A folder that is not a usable RM checkpoint; the message names the file and the problem."""


@dataclass(frozen=True)
class LoadedRM:
    """A checkpoint read back: the model (eval mode, frozen), its metadata and optional prototype."""

    model: RewardModel
    metadata: dict[str, Any]
    prototype: torch.Tensor | None

    @property
    def model_version(self) -> str:
        return str(self.metadata["model_version"])


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != METADATA
    }


def save_checkpoint(
    model: RewardModel, out_dir: str | Path, metadata: dict[str, Any], prototype: torch.Tensor | None = None
) -> dict[str, Any]:
    """Write ``model`` (after ``prepare_for_saving``) with ``metadata`` to ``out_dir``, replacing
    any checkpoint there. Adds format, kind, architecture, files and model_version to the metadata
    and returns it as written."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        model.prepare_for_saving()
        model.save_extra(tmp)
        # One metadata key: safetensors writes its metadata map in hash order, so two keys made the file
        # bytes, and with them model_version, differ between identical trainings (the kind is in metadata.json).
        save_file(model.persistent_state(), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if prototype is not None:
            save_file({"prototype": prototype.detach().float().contiguous()}, str(tmp / PROTOTYPE))
        files = _file_hashes(tmp)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        meta = {
            **metadata,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": model.kind,
            "architecture": model.architecture(),
            "files": files,
            "model_version": f"{model.kind}-{digest[:12]}",
        }
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_metadata(checkpoint_dir: str | Path) -> dict[str, Any]:
    """metadata.json of a checkpoint; CheckpointError when missing, unreadable or of another format."""
    root = Path(checkpoint_dir)
    path = root / METADATA
    if not path.is_file():
        raise CheckpointError(f"{root} is not an RM checkpoint: {METADATA} is missing (train one with `mor reward-node train`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an RM checkpoint (format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    return meta


def load_checkpoint(checkpoint_dir: str | Path, verify: bool = True) -> LoadedRM:
    """Rebuild the RM saved in ``checkpoint_dir`` (eval mode, no gradients). With ``verify`` every
    file is checked against the sha256 in the metadata first."""
    root = Path(checkpoint_dir)
    meta = read_metadata(root)
    if verify:
        listed: dict[str, str] = meta.get("files", {})
        bad = [rel for rel, sha in listed.items() if not (root / rel).is_file() or file_sha256(root / rel) != sha]
        if bad:
            raise CheckpointError(f"{root}: file(s) missing or changed since training: {', '.join(bad[:5])}")
    try:
        cls = rm_class(str(meta["kind"]))
    except ValueError as exc:
        raise CheckpointError(f"{root / METADATA}: {exc}") from None
    model = cls.from_architecture(meta["architecture"], root)
    try:
        model.load_persistent_state(load_file(str(root / WEIGHTS)))
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{root / WEIGHTS}: does not fit the {meta['kind']} architecture: {exc}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    proto_path = root / PROTOTYPE
    prototype = load_file(str(proto_path))["prototype"] if proto_path.is_file() else None
    return LoadedRM(model, meta, prototype)


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA",
    "PROTOTYPE",
    "WEIGHTS",
    "CheckpointError",
    "LoadedRM",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
