"""Load VQA examples from disk in three formats, detected automatically.

  (a) our JSONL (one VQAExample per line, as in <world>/benchmarks/<b>/<split>.jsonl);
  (b) a plain JSONL of {"image", "question", "answers"} (optional "id", "answer_type");
  (c) VQAv2: a questions JSON {"questions": [{image_id, question, question_id}]} plus an annotations
      JSON {"annotations": [{question_id, answers: [{answer}], answer_type}]} and an image pattern
      such as "val2014/COCO_val2014_%012d.jpg" (relative to the questions file's folder).

Image paths in the returned examples are absolute: (a) resolves them against the world root (the
nearest parent folder holding manifest.json, else the file's folder), (b) and (c) against the file's
folder. Malformed input raises LoaderError naming the file and, for JSONL, the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .answers import majority_answer
from .records import RecordError, VQAExample

VQAV2_TYPES = {"yes/no": "yesno", "number": "number", "other": "word"}
OUR_KEYS = frozenset({"id", "benchmark", "split", "image", "question", "answers", "answer_type"})
PLAIN_KEYS = frozenset({"image", "question", "answers"})
PLAIN_OPTIONAL = frozenset({"id", "answer_type", "benchmark", "split"})


class LoaderError(ValueError):
    """Input that cannot be read as VQA examples; the message names the file (and line)."""


def infer_answer_type(answers: list[str]) -> str:
    """'yesno' for yes/no, 'number' for digits, else 'word' (on the majority normalised answer)."""
    top = majority_answer(answers)
    if top in ("yes", "no"):
        return "yesno"
    return "number" if top.isdigit() else "word"


def load_vqa(
    path: str | Path,
    *,
    annotations: str | Path | None = None,
    image_pattern: str | None = None,
    benchmark: str | None = None,
    split: str | None = None,
) -> list[VQAExample]:
    """Read VQA examples from `path` (format auto-detected, see module docstring).

    annotations / image_pattern only apply to VQAv2; when annotations is None a single sibling
    '*annotations*.json' is used. benchmark / split label examples of formats (b) and (c).
    """
    p = Path(path)
    if not p.is_file():
        raise LoaderError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8")
    head = text.lstrip()[:1]
    if not head:
        raise LoaderError(f"{p}: empty file")
    if p.suffix == ".json" or _is_single_json(text):
        return _load_vqav2(p, text, annotations, image_pattern, benchmark, split)
    return _load_jsonl(p, text, benchmark, split)


def _is_single_json(text: str) -> bool:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "questions" in data


def _world_root(p: Path) -> Path:
    for parent in p.resolve().parents:
        if (parent / "manifest.json").is_file():
            return parent
    return p.resolve().parent


def jsonl_objects(p: Path, lines: Iterable[str], error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; ``error`` names ``file:line`` for a line that
    is not JSON or not an object."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise error(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _load_jsonl(p: Path, text: str, benchmark: str | None, split: str | None) -> list[VQAExample]:
    out: list[VQAExample] = []
    fmt: str | None = None
    base = p.resolve().parent
    for lineno, obj in jsonl_objects(p, text.splitlines(), LoaderError):
        where = f"{p}:{lineno}"
        if fmt is None:
            fmt = "ours" if OUR_KEYS <= set(obj) else "plain"
            if fmt == "ours":
                base = _world_root(p)
        try:
            ex = VQAExample.from_dict(obj) if fmt == "ours" else _plain(obj, p, lineno, benchmark, split)
        except RecordError as e:
            raise LoaderError(f"{where}: {e}") from None
        out.append(_absolute(ex, base))
    if not out:
        raise LoaderError(f"{p}: no records")
    return out


def _plain(obj: dict[str, Any], p: Path, lineno: int, benchmark: str | None, split: str | None) -> VQAExample:
    missing = sorted(PLAIN_KEYS - set(obj))
    unknown = sorted(set(obj) - PLAIN_KEYS - PLAIN_OPTIONAL)
    if missing or unknown:
        raise RecordError(f"plain VQA record: missing keys {missing}, unknown keys {unknown}")
    answers = obj["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise RecordError(f"answers: expected a non-empty list of strings, got {obj['answers']!r}")
    ex = VQAExample(
        id=str(obj.get("id", f"{p.stem}-{lineno:06d}")),
        benchmark=str(obj.get("benchmark", benchmark or p.stem)),
        split=str(obj.get("split", split or "test")),
        image=obj["image"],
        question=obj["question"],
        answers=list(answers),
        answer_type=obj.get("answer_type") or infer_answer_type(answers),
        meta={},
    )
    ex._check()
    return ex


def _absolute(ex: VQAExample, base: Path) -> VQAExample:
    img = Path(ex.image)
    if img.is_absolute():
        return ex
    return VQAExample(**{**ex.to_dict(), "image": str(base / img)})


def _read_json(p: Path, text: str | None = None) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8") if text is None else text)
    except json.JSONDecodeError as e:
        raise LoaderError(f"{p}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _find_annotations(q: Path) -> Path:
    cands = sorted(x for x in q.parent.glob("*annotations*.json") if x != q)
    if len(cands) != 1:
        found = [c.name for c in cands] or "none"
        raise LoaderError(
            f"{q}: VQAv2 questions need an annotations file; pass annotations= (siblings found: {found})"
        )
    return cands[0]


def _load_vqav2(
    q: Path,
    text: str,
    annotations: str | Path | None,
    pattern: str | None,
    benchmark: str | None,
    split: str | None,
) -> list[VQAExample]:
    qdata = _read_json(q, text)
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise LoaderError(f"{q}: not a VQAv2 questions file (needs a 'questions' list)")
    a = Path(annotations) if annotations is not None else _find_annotations(q)
    if not a.is_file():
        raise LoaderError(f"{a}: no such annotations file")
    adata = _read_json(a)
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        raise LoaderError(f"{a}: not a VQAv2 annotations file (needs an 'annotations' list)")
    subtype = qdata.get("data_subtype")
    if pattern is None:
        if not isinstance(subtype, str):
            raise LoaderError(
                f"{q}: no 'data_subtype'; pass image_pattern= (e.g. 'val2014/COCO_val2014_%012d.jpg')"
            )
        pattern = f"{subtype}/COCO_{subtype}_%012d.jpg"
    try:
        pattern % 1
    except (TypeError, ValueError):
        raise LoaderError(f"image_pattern {pattern!r} must hold one integer field such as %012d") from None
    by_qid: dict[int, dict[str, Any]] = {}
    for k, ann in enumerate(adata["annotations"]):
        try:
            qid = int(ann["question_id"])
            answers = [str(x["answer"]) for x in ann["answers"]]
            atype = VQAV2_TYPES.get(ann.get("answer_type", ""), None)
        except (KeyError, TypeError, ValueError) as e:
            raise LoaderError(f"{a}: annotations[{k}] is malformed ({type(e).__name__}: {e})") from None
        if not answers:
            raise LoaderError(f"{a}: annotations[{k}] (question_id {qid}) has no answers")
        by_qid[qid] = {"answers": answers, "answer_type": atype or infer_answer_type(answers)}
    base = q.resolve().parent
    out: list[VQAExample] = []
    for k, item in enumerate(qdata["questions"]):
        try:
            qid, image_id, question = int(item["question_id"]), int(item["image_id"]), str(item["question"])
        except (KeyError, TypeError, ValueError) as e:
            raise LoaderError(f"{q}: questions[{k}] is malformed ({type(e).__name__}: {e})") from None
        if qid not in by_qid:
            raise LoaderError(f"{q}: questions[{k}] (question_id {qid}) has no annotation in {a}")
        ann = by_qid[qid]
        out.append(
            VQAExample(
                id=f"vqa-{qid}",
                benchmark=benchmark or "vqav2",
                split=split or (subtype if isinstance(subtype, str) else "test"),
                image=str(base / (pattern % image_id)),
                question=question,
                answers=ann["answers"],
                answer_type=ann["answer_type"],
                meta={"question_id": qid, "image_id": image_id},
            )
        )
    return out
