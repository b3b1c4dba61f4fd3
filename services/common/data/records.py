"""Records of the synthetic world, one JSON object per line on disk (see FORMAT.md).

Plain frozen dataclasses: they cross module boundaries as values, serialise with sorted keys and
fixed separators (byte-stable output), and parse back with a clear error on a missing or unknown key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

AnswerType = Literal["number", "word", "yesno"]
Split = Literal["train", "test"]
ANSWER_TYPES: tuple[str, ...] = ("number", "word", "yesno")
SPLITS: tuple[str, ...] = ("train", "test")
# What the two answers of a preference pair differ in (PreferencePair.kind).
PAIR_KINDS: tuple[str, ...] = ("correctness", "style", "format")


def dumps(obj: Any) -> str:
    """The one JSON encoding of the world: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class RecordError(ValueError):
    """A JSON object that is not a valid record; the message names the missing or unknown keys."""


R = TypeVar("R", bound="_Record")


class _Record:
    """to_json / from_json shared by every record type."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        required = [
            f.name
            for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING  # type: ignore[arg-type]
        ]
        missing = [n for n in required if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise RecordError(f"{cls.__name__}: missing keys {missing}, unknown keys {unknown}")
        obj = cls(**data)
        obj._check()
        return obj

    @classmethod
    def from_json(cls: type[R], line: str) -> R:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{cls.__name__}: invalid JSON ({e.msg} at column {e.colno})") from None
        return cls.from_dict(data)

    def _check(self) -> None:
        """Type checks on parsed values; subclasses add their own."""


def _need_str(rec: object, *names: str) -> None:
    for n in names:
        if not isinstance(getattr(rec, n), str):
            raise RecordError(f"{type(rec).__name__}.{n}: expected a string, got {getattr(rec, n)!r}")


@dataclass(frozen=True)
class VQAExample(_Record):
    """One visual question with several reference answers (simulated annotators, VQA-style).

    image is a path relative to the world root (or, for loaded external data, to the file's folder
    resolved to an absolute path). meta holds the generator's facts (question type, objects, values)
    that the oracle, the justification renderer and the consistency tests read.
    """

    id: str
    benchmark: str
    split: str
    image: str
    question: str
    answers: list[str]
    answer_type: str
    meta: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        _need_str(self, "id", "benchmark", "split", "image", "question", "answer_type")
        if (
            not isinstance(self.answers, list)
            or not self.answers
            or not all(isinstance(a, str) for a in self.answers)
        ):
            raise RecordError(
                f"VQAExample.answers: expected a non-empty list of strings, got {self.answers!r}"
            )
        if self.answer_type not in ANSWER_TYPES:
            raise RecordError(
                f"VQAExample.answer_type: {self.answer_type!r} is not one of {list(ANSWER_TYPES)}"
            )
        if not isinstance(self.meta, dict):
            raise RecordError(f"VQAExample.meta: expected an object, got {self.meta!r}")

    @property
    def qtype(self) -> str | None:
        """The generator's question type ('count', 'value', ...), None for external data."""
        q = self.meta.get("qtype")
        return q if isinstance(q, str) else None

    @property
    def canonical_answer(self) -> str:
        """The generator's canonical answer, else the first reference answer."""
        a = self.meta.get("answer")
        return a if isinstance(a, str) else self.answers[0]


@dataclass(frozen=True)
class PreferencePair(_Record):
    """One preference annotation: for (image, question), `chosen` is preferred over `rejected`.

    `kind` says what the two answers differ in (correctness, style, format; PAIR_KINDS), as the
    annotating organisation knows it; "" when the source does not say (external data).
    """

    id: str
    client: str
    benchmark: str
    image: str
    question: str
    chosen: str
    rejected: str
    example_id: str
    kind: str = ""

    def _check(self) -> None:
        _need_str(self, "id", "client", "benchmark", "image", "question", "chosen", "rejected", "example_id", "kind")


@dataclass(frozen=True)
class PoolPrompt(_Record):
    """A server-side prompt for RL; answers are the reference answers (empty when unknown)."""

    id: str
    benchmark: str
    image: str
    question: str
    answers: list[str]
    answer_type: str
    example_id: str

    def _check(self) -> None:
        _need_str(self, "id", "benchmark", "image", "question", "answer_type", "example_id")
        if not isinstance(self.answers, list) or not all(isinstance(a, str) for a in self.answers):
            raise RecordError(f"PoolPrompt.answers: expected a list of strings, got {self.answers!r}")


def read_records(path: str | Path, cls: type[R]) -> list[R]:
    """Parse a JSONL file of `cls` records; an error names the file and the 1-based line."""
    p = Path(path)
    out: list[R] = []
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out.append(cls.from_json(line))
            except RecordError as e:
                raise RecordError(f"{p}:{lineno}: {e}") from None
    return out


def write_records(records: Iterable[_Record]) -> bytes:
    """The JSONL bytes of records: one `to_json()` per line, each ending in a newline."""
    return "".join(r.to_json() + "\n" for r in records).encode("utf-8")
