"""Text corpus of the synthetic world, for training an offline tokenizer.

corpus_texts() lists, deterministically: every question template filled with example values, every
answer word of every question type, each answer rendered in every style (word, digits, justified with
each reason phrasing, verbose), the number words and the justification / verbose phrasings. It does
not draw images, so it is fast and needs no world on disk.
"""

from __future__ import annotations

import numpy as np

from .answers import GENERIC_REASONS, RENDER_STYLES, VERBOSE_TAILS, render_answer
from .benchmarks.registry import BENCHMARKS, get_benchmark
from .records import VQAExample
from .vocab import BACKGROUNDS, COLOUR_NAMES, NUMBER_WORDS, SHAPES, YES_NO

SAMPLES_PER_BENCHMARK = 120
CORPUS_SEED = 20240601


def _add(out: dict[str, None], text: str) -> None:
    if text:
        out.setdefault(text, None)


def corpus_texts() -> list[str]:
    """All question, answer and justification texts of the world (deduplicated, fixed order)."""
    out: dict[str, None] = {}
    for word, digit in NUMBER_WORDS.items():
        _add(out, word)
        _add(out, digit)
    for w in (*COLOUR_NAMES, *SHAPES, *YES_NO, *BACKGROUNDS):
        _add(out, w)
    for t in (*GENERIC_REASONS, *VERBOSE_TAILS):
        _add(out, t)
    for name in BENCHMARKS:
        bench = get_benchmark(name)
        for qt in bench.qtypes.values():
            for a in qt.answer_space:
                _add(out, a)
        rng = np.random.default_rng([CORPUS_SEED, len(name)])
        for i in range(SAMPLES_PER_BENCHMARK):
            s = bench.sample(rng, "train" if i % 2 else "test")
            ex = VQAExample(
                id=f"corpus-{name}-{i}",
                benchmark=name,
                split="train",
                image="",
                question=s.question,
                answers=[s.answer],
                answer_type=bench.qtypes[s.qtype].answer_type,
                meta={"qtype": s.qtype, "answer": s.answer, **s.facts},
            )
            _add(out, s.question)
            space = bench.qtypes[s.qtype].answer_space
            for a in (s.answer, space[i % len(space)]):
                for style in RENDER_STYLES:
                    _add(out, render_answer(ex, style, None, answer=a))
                for reason in bench.reasons(s.qtype, ex.meta, a):
                    _add(out, f"{a} because {reason}")
            for tail in VERBOSE_TAILS:
                _add(out, f"{s.answer}, {tail}")
    return list(out)
