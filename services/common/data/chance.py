"""Chance levels: what a model scores without looking at the image.

Two floors, both exact for the synthetic benchmarks:
  chance_level(example)  accuracy of a uniform guess over the question type's answer space
                         (count 1/4, colour 1/6, shape 1/3, yes/no 1/2, digit 1/10, bar value 1/9, ...).
  blind_baseline(train, test)  VQA accuracy on test of always answering the most frequent train
                         answer of the question type (a "blind" prior model; >= uniform chance).
CHANCE holds the per-question-type table; benchmark_chance averages it over a set of examples, so a
benchmark's chance reflects its question-type mix.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from .answers import vqa_accuracy
from .benchmarks.registry import BENCHMARKS, get_benchmark
from .records import VQAExample

#: benchmark -> question type -> chance accuracy of a uniform guess.
CHANCE: dict[str, dict[str, float]] = {
    name: {q: qt.chance for q, qt in get_benchmark(name).qtypes.items()} for name in BENCHMARKS
}


def chance_level(example: VQAExample) -> float | None:
    """Uniform-guess accuracy for this example's question type; 0.5 for external yes/no, else None."""
    qtype = example.qtype
    if example.benchmark in CHANCE and qtype in CHANCE[example.benchmark]:
        return CHANCE[example.benchmark][qtype]
    if example.answer_type == "yesno":
        return 0.5
    return None


def benchmark_chance(examples: Iterable[VQAExample]) -> dict[str, float]:
    """Mean chance level per benchmark (examples whose chance is unknown are skipped)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for ex in examples:
        c = chance_level(ex)
        if c is not None:
            acc[ex.benchmark].append(c)
    return {b: sum(v) / len(v) for b, v in sorted(acc.items())}


def blind_baseline(train: Iterable[VQAExample], test: Iterable[VQAExample]) -> dict[str, float]:
    """Per benchmark, mean VQA accuracy on test of the most frequent train answer per question type."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for ex in train:
        counts[(ex.benchmark, ex.qtype or ex.answer_type)][ex.canonical_answer] += 1
    acc: dict[str, list[float]] = defaultdict(list)
    for ex in test:
        c = counts.get((ex.benchmark, ex.qtype or ex.answer_type))
        guess = c.most_common(1)[0][0] if c else ""
        acc[ex.benchmark].append(vqa_accuracy(guess, ex.answers) if guess else 0.0)
    return {b: sum(v) / len(v) for b, v in sorted(acc.items())}
