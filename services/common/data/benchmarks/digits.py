"""`digits`: scikit-learn's bundled 8x8 handwritten digits, upscaled, coloured and shifted.

Questions: which digit; is it even or odd; what is the digit plus one. The 1797 source images are
split once and for all (index % 5 == 0 -> test sources, the rest -> train sources), so test pictures
are digits the train split never shows, whatever the seed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from ..vocab import BACKGROUNDS
from .base import Benchmark, QuestionType, SampledQuestion

#: Ink colours (dark or saturated, all readable on every background).
INKS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (20, 130, 50),
    "purple": (120, 40, 160),
}
DIGIT_SCALE = 0.75  # the digit covers this fraction of the image side


@lru_cache(maxsize=1)
def _source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def source_indices(split: str) -> np.ndarray:
    """Indices of sklearn digits used for a split (fixed, seed-independent)."""
    n = len(_source()[1])
    idx = np.arange(n)
    return idx[idx % 5 == 0] if split == "test" else idx[idx % 5 != 0]


def source_label(index: int) -> int:
    return int(_source()[1][index])


class DigitsBenchmark(Benchmark):
    name = "digits"
    qtypes = {
        "which": QuestionType(
            "which",
            "number",
            tuple(str(n) for n in range(10)),
            ("the picture shows the digit {answer_word}", "the handwritten digit is {answer_word}"),
        ),
        "parity": QuestionType(
            "parity",
            "word",
            ("even", "odd"),
            ("the digit {digit} is {answer}", "{digit} is an {answer} number"),
        ),
        "plus_one": QuestionType(
            "plus_one",
            "number",
            tuple(str(n) for n in range(1, 11)),
            ("the digit is {digit} and {digit} plus one is {answer}", "{digit} plus one makes {answer_word}"),
        ),
    }

    def sample(self, rng: np.random.Generator, split: str) -> SampledQuestion:
        qtype = self.pick_qtype(rng)
        pool = source_indices(split)
        src = int(pool[int(rng.integers(len(pool)))])
        digit = source_label(src)
        ink = sorted(INKS)[int(rng.integers(len(INKS)))]
        background = sorted(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        room = 1.0 - DIGIT_SCALE
        facts: dict[str, Any] = {
            "digit": digit,
            "source_index": src,
            "ink": ink,
            "background": background,
            "dx": round(float(rng.uniform(0, room)), 3),
            "dy": round(float(rng.uniform(0, room)), 3),
        }
        if qtype == "which":
            return SampledQuestion(qtype, "What digit is shown?", str(digit), facts)
        if qtype == "parity":
            return SampledQuestion(qtype, "Is the digit even or odd?", "even" if digit % 2 == 0 else "odd", facts)
        return SampledQuestion(qtype, "What is the digit plus one?", str(digit + 1), facts)

    def draw(self, facts: dict[str, Any], image_size: int) -> Image.Image:
        images, _ = _source()
        glyph = Image.fromarray((images[facts["source_index"]] * 255).astype(np.uint8))
        side = max(8, round(image_size * DIGIT_SCALE))
        alpha = np.asarray(glyph.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        bg = np.array(BACKGROUNDS[facts["background"]], dtype=np.float32)
        ink = np.array(INKS[facts["ink"]], dtype=np.float32)
        out = np.empty((image_size, image_size, 3), dtype=np.float32)
        out[:] = bg
        x0 = min(image_size - side, round(facts["dx"] * image_size))
        y0 = min(image_size - side, round(facts["dy"] * image_size))
        a = alpha[..., None]
        out[y0 : y0 + side, x0 : x0 + side] = bg * (1 - a) + ink * a
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
