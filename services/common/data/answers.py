"""Answer text: VQA-style normalisation, extraction, accuracy, format check, style detection and rendering.

Conventions (all closed-form, tested):
  normalize_answer  lowercase; punctuation -> space; number words -> digits ('three' -> '3');
                    articles (a, an, the) dropped unless that would leave nothing ('A' stays 'a',
                    because bar A is a valid answer); whitespace collapsed.
  extract_answer    first line of the response, cut before the first ' because' or . , ; : ! ?
  vqa_accuracy      VQA metric: acc = mean over the N leave-one-out subsets of min(1, matches / 3),
                    on normalised extracted prediction vs normalised references.
  exact_match       normalised extracted prediction == the majority normalised reference.
  format_ok         non-empty, one line, <= 16 words, and the extracted short answer has 1-3 words.
Styles: "word" (numbers spelled out: 'three'), "digits" ('3'), "justified" ('3 because ...', answer in
digits then a reason from the example's facts). "verbose" is not a client style: a correct-looking
answer followed by a long ramble (fails format_ok), used as a negative candidate.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .benchmarks.registry import BENCHMARKS, get_benchmark
from .records import VQAExample
from .vocab import DIGIT_TO_WORD, NUMBER_WORDS

Style = Literal["word", "digits", "justified"]
RenderStyle = Literal["word", "digits", "justified", "verbose"]
STYLES: tuple[str, ...] = ("word", "digits", "justified")
RENDER_STYLES: tuple[str, ...] = (*STYLES, "verbose")

MAX_WORDS = 16
MAX_ANSWER_WORDS = 3
ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_CUT = re.compile(r"\s+because\b|[.,;:!?]", re.IGNORECASE)
_BECAUSE = re.compile(r"\sbecause\s", re.IGNORECASE)

GENERIC_REASONS: tuple[str, ...] = ("that is what the picture shows", "I can see it in the image")
VERBOSE_TAILS: tuple[str, ...] = (
    "and I am quite sure about it after looking very carefully at every single part of the picture",
    "which is my final answer after studying the whole image and thinking about every detail for a while",
)

Rng = random.Random | np.random.Generator | None


def _pick(rng: Rng, options: Sequence[str]) -> str:
    if rng is None or len(options) == 1:
        return options[0]
    if isinstance(rng, np.random.Generator):
        return options[int(rng.integers(len(options)))]
    return options[rng.randrange(len(options))]


def normalize_answer(text: str) -> str:
    """VQA-style normalisation (see module docstring); '' for an empty answer."""
    tokens = _PUNCT.sub(" ", text.lower()).split()
    tokens = [NUMBER_WORDS.get(t, t) for t in tokens]
    kept = [t for t in tokens if t not in ARTICLES]
    return " ".join(kept if kept else tokens)


def extract_answer(response: str) -> str:
    """The short answer at the start of a response: text before ' because', punctuation or a newline."""
    lines = response.strip().splitlines()
    if not lines:
        return ""
    first = lines[0]
    m = _CUT.search(first)
    return (first[: m.start()] if m else first).strip()


def vqa_accuracy(response: str, answers: Sequence[str]) -> float:
    """Standard VQA accuracy of a response against N reference answers, in [0, 1].

    With N >= 2: mean over i of min(1, #{j != i : ref_j == pred} / 3). With one reference: 0 or 1.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_answer(extract_answer(response))
    if not pred:
        return 0.0
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(refs[0] == pred)
    hits = [r == pred for r in refs]
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(refs)


def majority_answer(answers: Sequence[str]) -> str:
    """The most frequent normalised reference (ties: the one seen first)."""
    if not answers:
        raise ValueError("majority_answer needs at least one reference answer")
    refs = [normalize_answer(a) for a in answers]
    counts = Counter(refs)
    best = max(counts.values())
    return next(r for r in refs if counts[r] == best)


def exact_match(response: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised extracted answer equals the majority reference, else 0.0."""
    pred = normalize_answer(extract_answer(response))
    return float(bool(pred) and pred == majority_answer(answers))


def format_ok(response: str) -> bool:
    """Non-empty, a single line, at most 16 words, starting with a short (1-3 word) answer."""
    text = response.strip()
    if not text or "\n" in text or "\r" in text:
        return False
    if len(text.split()) > MAX_WORDS:
        return False
    n = len(extract_answer(text).split())
    return 1 <= n <= MAX_ANSWER_WORDS


def detect_styles(response: str) -> frozenset[str]:
    """The client styles a well-formed response is consistent with (empty when format_ok fails).

    ' because ' -> {justified}; a digit answer -> {digits}; a number word -> {word}; an answer with
    no number in it (a colour, 'yes') reads the same in both terse styles -> {word, digits}.
    """
    if not format_ok(response):
        return frozenset()
    first = response.strip()
    if _BECAUSE.search(f" {first} "):
        return frozenset({"justified"})
    tokens = _PUNCT.sub(" ", extract_answer(first).lower()).split()
    if any(t.isdigit() for t in tokens):
        return frozenset({"digits"})
    if any(t in NUMBER_WORDS for t in tokens):
        return frozenset({"word"})
    return frozenset({"word", "digits"})


def as_word(answer: str) -> str:
    """'3' -> 'three'; anything else unchanged."""
    return DIGIT_TO_WORD.get(answer.strip(), answer)


def as_digits(answer: str) -> str:
    """'three' -> '3'; anything else unchanged."""
    return NUMBER_WORDS.get(answer.strip().lower(), answer)


def reasons_for(example: VQAExample, answer: str) -> list[str]:
    """Justification phrasings for `answer` on this example (generic ones for external data)."""
    qtype = example.qtype
    if example.benchmark in BENCHMARKS and qtype is not None:
        bench = get_benchmark(example.benchmark)
        if qtype in bench.qtypes:
            return bench.reasons(qtype, example.meta, as_digits(answer))
    return list(GENERIC_REASONS)


def render_answer(example: VQAExample, style: str, rng: Rng = None, answer: str | None = None) -> str:
    """The example's answer (or `answer`, e.g. a wrong one) written in a style.

    rng picks among phrasings (justified reasons, verbose tails); None always takes the first.
    """
    value = example.canonical_answer if answer is None else answer
    if style == "word":
        return as_word(value)
    if style == "digits":
        return as_digits(value)
    if style == "justified":
        return f"{as_digits(value)} because {_pick(rng, reasons_for(example, value))}"
    if style == "verbose":
        return f"{as_word(value)}, {_pick(rng, VERBOSE_TAILS)}"
    raise ValueError(f"unknown answer style {style!r}; supported: {', '.join(RENDER_STYLES)}")
