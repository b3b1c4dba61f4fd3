"""One way in for outside data: VQA / prompt datasets and preference datasets, from any PATH.

``read_vqa(path, split)`` gives a VQASet (prompts, with reference answers where the data has them);
``read_prefs(path, split)`` gives a PrefSet (PreferencePair records); both carry an ImageStore, which
answers ``load_image(key)`` and ``image_bytes(key)`` as a World does, so every consumer of the
generated world (evaluation, SFT, the prompt stream, router pairs, RM training) takes them
unchanged. Formats and field names: docs/data.md. Storage layouts: tables.py. VQAv2 JSON: loaders.py.

Validation happens at load, for every record at once: a record error names the file, the record
(JSONL line or row index) and the field; missing image files are all listed (up to MAX_LISTED).
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from .answers import majority_answer, normalize_answer
from .loaders import VQAV2_TYPES, LoaderError, infer_answer_type, load_vqa
from .records import ANSWER_TYPES, PoolPrompt, PreferencePair, VQAExample
from .tables import DatasetError, Table, read_table

MAX_LISTED = 10  # problems listed in one error message; the count says how many there are in all
QUESTION_FIELDS = ("question", "prompt")
IMAGE_FIELDS = ("image", "images")
ANSWER_FIELDS = ("answers", "answer")


class ImageSource(Protocol):
    """What the consumers of prompts and pairs need of images: a World or an ImageStore."""

    def load_image(self, rel: str) -> Image.Image: ...

    def image_bytes(self, rel: str) -> bytes: ...


class ImageStore:
    """Images of an outside dataset by key: an absolute file path, or ``embedded:<sha>.<png|jpg>``."""

    def __init__(self) -> None:
        self._embedded: dict[str, bytes] = {}

    def add_bytes(self, data: bytes) -> str:
        ext = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
        key = f"embedded:{hashlib.sha256(data).hexdigest()[:20]}.{ext}"
        self._embedded[key] = data
        return key

    def image_bytes(self, rel: str) -> bytes:
        """PNG or JPEG bytes (the key's suffix says which); other encodings are converted to PNG."""
        data = self._embedded[rel] if rel in self._embedded else Path(rel).read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            return data
        buf = io.BytesIO()
        self._open(data).save(buf, format="PNG")
        return buf.getvalue()

    def load_image(self, rel: str) -> Image.Image:
        return self._open(self._embedded[rel] if rel in self._embedded else Path(rel).read_bytes())

    @staticmethod
    def _open(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    @property
    def n_embedded(self) -> int:
        return len(self._embedded)


@dataclass
class VQASet:
    """One split of a VQA or prompt dataset: PoolPrompt records (answers [] where the data has none)."""

    source: Path
    format: str
    split: str
    splits: tuple[str, ...]
    prompts: list[PoolPrompt]
    images: ImageSource
    where: dict[str, str] = field(default_factory=dict)  # prompt id -> file:line / row

    @property
    def answered(self) -> int:
        return sum(bool(p.answers) for p in self.prompts)

    def examples(self, purpose: str = "this command") -> list[VQAExample]:
        """The records as VQAExamples; DatasetError when any lacks reference answers."""
        missing = [p for p in self.prompts if not p.answers]
        if missing:
            listed = "; ".join(self.where.get(p.id, p.id) for p in missing[:MAX_LISTED])
            raise DatasetError(
                f"{self.source}: {len(missing)} of {len(self.prompts)} records have no reference answers "
                f"(field 'answers'), which {purpose} needs: {listed}{_more(len(missing))}"
            )
        return [VQAExample(id=p.id, benchmark=p.benchmark, split=self.split, image=p.image, question=p.question,
                           answers=list(p.answers), answer_type=p.answer_type) for p in self.prompts]


@dataclass
class PrefSet:
    """One split of a preference dataset."""

    source: Path
    format: str
    split: str
    splits: tuple[str, ...]
    pairs: list[PreferencePair]
    images: ImageSource
    sha256: str = ""


def _more(n: int) -> str:
    return f"; ... {n - MAX_LISTED} more" if n > MAX_LISTED else ""


def _name(source: Path) -> str:
    """The default benchmark label of a dataset's records: its folder's or file's name."""
    return source.stem if source.is_file() else source.resolve().name


# ---- fields --------------------------------------------------------------------------------------


class FieldError(ValueError):
    """One bad field of one record: (field, message)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"field {name!r}: {message}")


def _pick(row: dict[str, Any], names: tuple[str, ...], what: str, required: bool = True) -> tuple[str, Any]:
    for n in names:
        if n in row and row[n] is not None:
            return n, row[n]
    if required:
        raise FieldError(names[0], f"missing ({what}; also read from {', '.join(repr(n) for n in names[1:])})"
                         if len(names) > 1 else f"missing ({what})")
    return names[0], None


def _message_text(value: Any, name: str, roles: tuple[str, ...]) -> str:
    """A string, or the text parts of TRL conversational messages [{role, content}] of the given roles."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
        raise FieldError(name, f"expected a string or a list of {{role, content}} messages, got {_short(value)}")
    texts = []
    for m in value:
        if m.get("role", roles[0]) not in roles:
            if m.get("role") in ("user", "assistant"):
                raise FieldError(name, f"holds a {m['role']!r} turn; only one-turn conversations are supported")
            continue  # a system message: the policy's own chat template brings its own
        content = m["content"]
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(c["text"] for c in content if isinstance(c, dict) and c.get("type") == "text" and c.get("text"))
    text = "\n".join(t.strip() for t in texts if t.strip())
    if not text:
        raise FieldError(name, "has no text")
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _answers(name: str, value: Any) -> list[str]:
    """A string, a list of strings, or VQAv2-on-the-Hub's list of {"answer": ...} dicts."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FieldError(name, f"expected a string or a list of strings, got {_short(value)}")
    out = []
    for a in items:
        if isinstance(a, dict) and isinstance(a.get("answer"), str):
            a = a["answer"]
        if not isinstance(a, str):
            raise FieldError(name, f"expected a list of strings, got an item {_short(a)}")
        if a.strip():
            out.append(a)
    return out


def _image(name: str, value: Any, base: Path, store: ImageStore, missing: list[tuple[str, str]],
           where: str) -> str:
    """The image key of a record (files are checked to exist; ``missing`` collects those that do not)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise FieldError(name, f"holds {len(value)} images; MoR prompts have exactly one")
        value = value[0]
    if isinstance(value, dict):  # datasets' Image feature, undecoded
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise FieldError(name, "an image struct with neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise FieldError(name, "empty image bytes")
        return store.add_bytes(bytes(value))
    if not isinstance(value, str) or not value:
        raise FieldError(name, f"expected an image path, image bytes or a datasets Image, got {_short(value)}")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        missing.append((where, f"field {name!r}: {path}"))
    return str(path)


def _collect(table: Table, parse, missing: list[tuple[str, str]]) -> list[Any]:
    """parse(where, row, base) for every row; every invalid record and every missing image file is reported
    in one DatasetError (up to MAX_LISTED of each, with their counts)."""
    out, errors = [], []
    for where, row, base in table.rows():
        try:
            out.append(parse(where, row, base))
        except FieldError as exc:
            errors.append(f"{where}: {exc}")
    problems = []
    if errors:
        problems.append(f"{len(errors)} of {len(table)} records are invalid: " + "; ".join(errors[:MAX_LISTED])
                        + _more(len(errors)))
    if missing:
        problems.append(f"{len(missing)} of {len(table)} records name an image file that does not exist: "
                        + "; ".join(f"{w}: {m}" for w, m in missing[:MAX_LISTED]) + _more(len(missing)))
    if problems:
        raise DatasetError(f"{table.source}: " + "; and ".join(problems))
    return out


# ---- VQA / prompt datasets -------------------------------------------------------------------


def read_vqa(path: str | Path, split: str | None = None, default: tuple[str, ...] = ("test",), *,
             annotations: str | Path | None = None, image_pattern: str | None = None) -> VQASet:
    """One split of a VQA or prompt dataset (JSONL, parquet, save_to_disk, split files, VQAv2 JSON)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return _read_vqav2(p, split, annotations, image_pattern)
    table = read_table(p, split, default)
    store, missing, where = ImageStore(), [], {}
    label = _name(p)
    ids: Counter[str] = Counter()

    def parse(at: str, row: dict[str, Any], base: Path) -> PoolPrompt:
        qname, question = _pick(row, QUESTION_FIELDS, "the question text")
        question = _message_text(question, qname, ("user",))
        iname, image = _pick(row, IMAGE_FIELDS, "the image: a path or an embedded image")
        key = _image(iname, image, base, store, missing, at)
        aname, raw = _pick(row, ANSWER_FIELDS, "", required=False)
        answers = [] if raw is None else _answers(aname, raw)
        atype = row.get("answer_type")
        atype = VQAV2_TYPES.get(atype, atype) if isinstance(atype, str) else None
        if answers and atype not in ANSWER_TYPES:
            atype = infer_answer_type(answers)
        rid = row.get("id", row.get("question_id"))
        rid = f"{label}-{len(ids):06d}" if rid is None else str(rid)
        ids[rid] += 1
        benchmark = row.get("benchmark")
        prompt = PoolPrompt(id=rid, benchmark=benchmark if isinstance(benchmark, str) and benchmark else label,
                            image=key, question=question, answers=answers, answer_type=atype or "word",
                            example_id=str(row.get("example_id", rid)))
        where[rid] = at
        return prompt

    prompts = _collect(table, parse, missing)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise DatasetError(f"{p}: field 'id' repeats ({len(dup)} ids, e.g. {', '.join(map(repr, dup[:3]))}); "
                           "ids must be unique, or left out")
    return VQASet(p, table.format, table.split, table.splits, prompts, store, where)


def _read_vqav2(p: Path, split: str | None, annotations: str | Path | None, pattern: str | None) -> VQASet:
    try:
        examples = load_vqa(p, annotations=annotations, image_pattern=pattern)
    except LoaderError as exc:
        raise DatasetError(str(exc)) from None
    name = examples[0].split
    if split is not None and split != name:
        raise DatasetError(f"{p}: no split {split!r} (this VQAv2 file holds {name!r})")
    missing = [(f"{p} [questions[{k}]]", f"question_id {ex.meta['question_id']}: {ex.image}")
               for k, ex in enumerate(examples) if not Path(ex.image).is_file()]
    if missing:
        listed = "; ".join(f"{w}: {m}" for w, m in missing[:MAX_LISTED])
        raise DatasetError(f"{p}: {len(missing)} of {len(examples)} questions name an image file that does not "
                           f"exist: {listed}{_more(len(missing))}")
    prompts = [PoolPrompt(id=ex.id, benchmark=ex.benchmark, image=ex.image, question=ex.question,
                          answers=ex.answers, answer_type=ex.answer_type, example_id=ex.id) for ex in examples]
    return VQASet(p, "vqav2", name, (name,), prompts, ImageStore(),
                  {ex.id: f"{p} [questions[{k}]]" for k, ex in enumerate(examples)})


def sft_answer(answers: list[str]) -> str:
    """The reference an SFT target is written in: the first answer as given whose normalised form is the majority."""
    top = majority_answer(answers)
    return next(a.strip() for a in answers if normalize_answer(a) == top)


# ---- preference datasets ----------------------------------------------------------------------


def read_prefs(path: str | Path, split: str | None = None, default: tuple[str, ...] = ("train",),
               client: str = "") -> PrefSet:
    """One split of a preference dataset: TRL's (prompt, chosen, rejected, images) or plain JSONL of
    (image, question, chosen, rejected); PreferencePair lines of a world's client folder read as well."""
    p = Path(path)
    table = read_table(p, split, default)
    store, missing = ImageStore(), []
    label = _name(p)
    count = [0]

    def parse(at: str, row: dict[str, Any], base: Path) -> PreferencePair:
        qname, question = _pick(row, QUESTION_FIELDS, "the prompt text")
        question = _message_text(question, qname, ("user",))
        iname, image = _pick(row, IMAGE_FIELDS, "the image: a path or an embedded image")
        key = _image(iname, image, base, store, missing, at)
        texts = {}
        for name in ("chosen", "rejected"):
            _, value = _pick(row, (name,), f"the {name} answer")
            texts[name] = _message_text(value, name, ("assistant",))
        rid = row.get("id")
        rid = f"{label}-{table.split}-{count[0]:06d}" if rid is None else str(rid)
        count[0] += 1
        benchmark, kind = row.get("benchmark"), row.get("kind")
        return PreferencePair(id=rid, client=str(row.get("client") or client), image=key, question=question,
                              benchmark=benchmark if isinstance(benchmark, str) and benchmark else label,
                              chosen=texts["chosen"], rejected=texts["rejected"],
                              example_id=str(row.get("example_id", rid)), kind=kind if isinstance(kind, str) else "")

    pairs = _collect(table, parse, missing)
    h = hashlib.sha256()
    for pair in pairs:
        h.update(pair.to_json().encode())
    return PrefSet(p, table.format, table.split, table.splits, pairs, store, h.hexdigest())


# ---- what `mor data info` prints ---------------------------------------------------------------


def describe(path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Kind, format, splits, record counts, columns, images and answers of the dataset at ``path``."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        vqa = read_vqa(p, split)
        return _vqa_summary(vqa, ["question", "image", "answers"])
    table = read_table(p, split, ("test", "train"))
    columns = table.columns
    if {"chosen", "rejected"} <= set(columns):
        prefs = read_prefs(p, table.split)
        by_kind = Counter(x.kind or "-" for x in prefs.pairs)
        return {"kind": "preference", "source": str(p), "format": prefs.format, "split": prefs.split,
                "splits": list(prefs.splits), "records": len(prefs.pairs), "columns": columns,
                "images": _image_summary(prefs.images, [x.image for x in prefs.pairs]),
                "benchmarks": dict(Counter(x.benchmark for x in prefs.pairs)), "pair_kinds": dict(by_kind)}
    return _vqa_summary(read_vqa(p, table.split), columns)


def _vqa_summary(vqa: VQASet, columns: list[str]) -> dict[str, Any]:
    answered = vqa.answered
    return {"kind": "vqa" if answered else "prompts", "source": str(vqa.source), "format": vqa.format,
            "split": vqa.split, "splits": list(vqa.splits), "records": len(vqa.prompts), "columns": columns,
            "answered": answered, "images": _image_summary(vqa.images, [x.image for x in vqa.prompts]),
            "benchmarks": dict(Counter(x.benchmark for x in vqa.prompts))}


def _image_summary(images: ImageSource, keys: list[str]) -> dict[str, int]:
    embedded = sum(k.startswith("embedded:") for k in keys)
    return {"files": len(keys) - embedded, "embedded": embedded, "distinct": len(set(keys))}


__all__ = ["DatasetError", "ImageSource", "ImageStore", "MAX_LISTED", "PrefSet", "VQASet", "describe", "read_prefs",
           "read_vqa", "sft_answer"]
