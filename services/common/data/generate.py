"""Deterministic generation of benchmark examples (facts, question, simulated annotators, PNG bytes).

Every random stream is a numpy Generator seeded from (root seed, a stable hash of a name, a split
index): no global state, no Python hash(), so the same config gives the same bytes on every run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .answers import as_word
from .benchmarks.registry import get_benchmark
from .records import VQAExample
from .vocab import BAR_LETTERS

SPLIT_INDEX = {"train": 0, "test": 1}


def stable_int(text: str) -> int:
    """A 64-bit integer from text via sha256 (stable across runs and machines, unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def stream(seed: int, name: str, index: int = 0) -> np.random.Generator:
    """The random stream for one named purpose ('bench:shapes', 'client:bank', ...)."""
    return np.random.default_rng([seed, stable_int(name), index])


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks; fixed zlib level)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def annotate(
    answer: str, space: tuple[str, ...], n: int, noise: float, rng: np.random.Generator
) -> list[str]:
    """n simulated annotators: the correct answer in varied surface forms ('3', 'three'; 'B', 'b'),
    except a few (each with probability `noise`, at most (n - 4) // 2 of them) who give a wrong one."""
    n_wrong = min(int(rng.binomial(n, noise)), max(0, (n - 4) // 2))
    wrong_pool = [a for a in space if a != answer]
    if not wrong_pool:
        n_wrong = 0
    out: list[str] = []
    for _ in range(n - n_wrong):
        form = rng.random()
        if answer.isdigit() and form < 0.3:
            out.append(as_word(answer))
        elif answer in BAR_LETTERS and form < 0.3:
            out.append(answer.lower())
        else:
            out.append(answer)
    for _ in range(n_wrong):
        out.append(wrong_pool[int(rng.integers(len(wrong_pool)))])
    order = rng.permutation(n)
    return [out[int(i)] for i in order]


def image_relpath(benchmark: str, example_id: str) -> str:
    return f"images/{benchmark}/{example_id}.png"


@dataclass(frozen=True)
class Generated:
    example: VQAExample
    png: bytes


def generate_examples(
    benchmark: str,
    split: str,
    count: int,
    *,
    seed: int,
    image_size: int,
    n_references: int,
    annotator_noise: float,
):
    """Yield `count` Generated examples of one benchmark split, in id order."""
    bench = get_benchmark(benchmark)
    rng = stream(seed, f"bench:{benchmark}", SPLIT_INDEX[split])
    for i in range(count):
        s = bench.sample(rng, split)
        qt = bench.qtypes[s.qtype]
        answers = annotate(s.answer, qt.answer_space, n_references, annotator_noise, rng)
        ex_id = f"{benchmark}-{split}-{i:05d}"
        meta = {"qtype": s.qtype, "answer": s.answer, **s.facts}
        example = VQAExample(
            id=ex_id,
            benchmark=benchmark,
            split=split,
            image=image_relpath(benchmark, ex_id),
            question=s.question,
            answers=answers,
            answer_type=qt.answer_type,
            meta=meta,
        )
        yield Generated(example, png_bytes(bench.draw(s.facts, image_size)))
