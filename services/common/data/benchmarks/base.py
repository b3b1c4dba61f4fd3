"""The shape every synthetic benchmark has: question types with a closed answer space, a sampler of
facts and a renderer of those facts into an image.

A generator is split in two pure steps so that the facts alone (JSON in the example's meta) decide
the picture: `sample(rng, split)` draws the facts, question and answer; `draw(facts, size)` paints
them. Tests re-derive answers from the facts and check the picture against them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..vocab import number_word

SUPERSAMPLE = 4  # shapes are painted at 4x and downsampled (anti-aliased, still deterministic)


@dataclass(frozen=True)
class QuestionType:
    """One question template family.

    answer_space lists every canonical answer the type can have; chance is the accuracy of a guess
    drawn uniformly from it without looking at the image (the floor a model must beat).
    reasons are justification templates, filled with the facts plus `answer` / `answer_word`
    (and whatever `Benchmark.reason_fields` adds), for the "justified" answer style.
    """

    name: str
    answer_type: str
    answer_space: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.answer_space)


@dataclass(frozen=True)
class SampledQuestion:
    """What `Benchmark.sample` returns: a question (its type, text and canonical answer) and the facts
    its image is drawn from."""

    qtype: str
    question: str
    answer: str
    facts: dict[str, Any]


class Benchmark(ABC):
    """Base of the generators; one subclass per file, registered in `registry.BENCHMARKS`."""

    name: ClassVar[str]
    qtypes: ClassVar[dict[str, QuestionType]]

    @abstractmethod
    def sample(self, rng: np.random.Generator, split: str) -> SampledQuestion:
        """Draw one example's facts, question and canonical answer (question type chosen uniformly)."""

    @abstractmethod
    def draw(self, facts: dict[str, Any], image_size: int) -> Image.Image:
        """Paint the facts into an RGB image of image_size x image_size pixels."""

    def reason_fields(self, qtype: str, facts: dict[str, Any], answer: str) -> dict[str, Any]:
        """Extra template fields for a justification of `answer` (which may be a wrong answer)."""
        return {}

    def reasons(self, qtype: str, facts: dict[str, Any], answer: str) -> list[str]:
        """Justification phrasings for `answer` on these facts; a wrong answer gets a wrong reason."""
        qt = self.qtypes[qtype]
        values = dict(facts)
        values.update(answer=answer, answer_word=number_word(answer))
        values.update(self.reason_fields(qtype, facts, answer))
        return [r.format(**values) for r in qt.reasons]

    def pick_qtype(self, rng: np.random.Generator) -> str:
        names = sorted(self.qtypes)
        return names[int(rng.integers(len(names)))]


def canvas(image_size: int, background: tuple[int, int, int]) -> Image.Image:
    """A supersampled RGB canvas; finish with `finish(img, image_size)`."""
    s = image_size * SUPERSAMPLE
    return Image.new("RGB", (s, s), background)


def finish(img: Image.Image, image_size: int) -> Image.Image:
    """Downsample a supersampled canvas to the final size (box filter: exact, deterministic)."""
    return img.resize((image_size, image_size), Image.Resampling.BOX)
