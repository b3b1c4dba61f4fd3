"""The pipeline's one artefact-cache rule.

    An artefact (a world, a policy or RM checkpoint, a job's results) is reused iff its record,
    ``<artefact>.inputs.json``, written atomically after the artefact was complete, holds the digest
    of the inputs asked for now: the configs that make it and the content hashes of the upstream
    artefacts it is made from.

Every stage builds through ``ensure``; where builds run elsewhere (RMs trained in parallel child
processes), through the same three steps by hand: ``current``, then ``begin`` (drop the record and
whatever is there), build, then ``complete``. So an interrupted build (no record) and a stale one
(another digest) are built again from nothing. Content hashes, not file times: a copied or restored
workdir is reused, and an upstream remade with other content is not.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".inputs.json"


def digest(inputs: Mapping[str, Any]) -> str:
    """Hex SHA-256 of ``inputs`` as canonical JSON (sorted keys; tuples as lists, paths as strings)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def record_path(artefact: Path) -> Path:
    """Where the record of ``artefact`` lives: beside it, so that removing the artefact keeps it apart."""
    return artefact.with_name(artefact.name + RECORD_SUFFIX)


def current(artefact: Path, inputs: Mapping[str, Any]) -> bool:
    """True when ``artefact`` exists and its record holds the digest of ``inputs``."""
    try:
        return artefact.exists() and json.loads(record_path(artefact).read_text())["digest"] == digest(inputs)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def begin(artefact: Path) -> None:
    """Start a (re)build: drop the record first (an interrupted build is never taken for a finished
    one), then whatever stands at ``artefact``."""
    record_path(artefact).unlink(missing_ok=True)
    if artefact.is_dir() and not artefact.is_symlink():
        shutil.rmtree(artefact)
    else:
        artefact.unlink(missing_ok=True)
    artefact.parent.mkdir(parents=True, exist_ok=True)


def complete(artefact: Path, inputs: Mapping[str, Any]) -> None:
    """Record that ``artefact`` is complete and was built from ``inputs`` (written to a temporary file,
    then renamed over the record)."""
    record = record_path(artefact)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({"digest": digest(inputs), "inputs": inputs}, indent=2, sort_keys=True, default=str))
    os.replace(tmp, record)


def ensure(artefact: Path, inputs: Mapping[str, Any], build: Callable[[], object]) -> bool:
    """Reuse ``artefact`` when it is current, else build it (``build()`` writes it); True when built."""
    if current(artefact, inputs):
        return False
    begin(artefact)
    build()
    complete(artefact, inputs)
    return True


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # (size, mtime_ns) only key this process's memo, so a file hashed twice is read once.
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, or of a folder's files (relative paths and their hashes)."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to hash")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{content_hash(p)}\n".encode())
    return h.hexdigest()


__all__ = ["RECORD_SUFFIX", "begin", "complete", "content_hash", "current", "digest", "ensure", "record_path"]
