"""`charts`: bar charts of 3-5 bars labelled A..E (left to right), distinct colours, integer values 1-9.

Questions: which bar is the tallest (letter); what colour is the tallest bar; how many bars; what is
the value of bar X. The maximum is always unique. Light grid lines mark every integer so a value
can be read off the picture.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..vocab import BACKGROUNDS, BAR_LETTERS, COLOUR_NAMES, COLOURS
from .base import Benchmark, QuestionType, SampledQuestion, canvas, finish

MIN_BARS, MAX_BARS = 3, 5
MAX_VALUE = 9
# Layout, as fractions of the image side.
LEFT, RIGHT, TOP, BOTTOM = 0.06, 0.04, 0.06, 0.20
GRID = (205, 205, 205)
AXIS = (90, 90, 90)
INK = (40, 40, 40)


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def plot_geometry(image_size: int, n_bars: int) -> dict[str, Any]:
    """Pixel geometry of a chart at the final image size: baseline y, pixels per unit, bar x-ranges.

    Shared by `draw` and the tests that measure bar heights on the picture.
    """
    s = float(image_size)
    x0, x1 = LEFT * s, (1 - RIGHT) * s
    base, top = (1 - BOTTOM) * s, TOP * s
    slot = (x1 - x0) / n_bars
    bars = [(x0 + (k + 0.15) * slot, x0 + (k + 0.85) * slot) for k in range(n_bars)]
    return {"base": base, "unit": (base - top) / MAX_VALUE, "bars": bars, "x0": x0, "x1": x1}


class ChartsBenchmark(Benchmark):
    name = "charts"
    qtypes = {
        "tallest_label": QuestionType(
            "tallest_label",
            "word",
            BAR_LETTERS,
            ("bar {answer} is the highest", "bar {answer} is taller than the others"),
        ),
        "tallest_colour": QuestionType(
            "tallest_colour",
            "word",
            COLOUR_NAMES,
            ("the tallest bar is {answer}", "the highest bar is coloured {answer}"),
        ),
        "count": QuestionType(
            "count",
            "number",
            tuple(str(n) for n in range(MIN_BARS, MAX_BARS + 1)),
            ("the chart has {answer_word} bars", "I count {answer_word} bars"),
        ),
        "value": QuestionType(
            "value",
            "number",
            tuple(str(n) for n in range(1, MAX_VALUE + 1)),
            ("bar {bar} reaches {answer_word}", "bar {bar} ends at the line for {answer_word}"),
        ),
    }

    def sample(self, rng: np.random.Generator, split: str) -> SampledQuestion:
        qtype = self.pick_qtype(rng)
        n = int(rng.integers(MIN_BARS, MAX_BARS + 1))
        while True:
            values = [int(v) for v in rng.integers(1, MAX_VALUE + 1, size=n)]
            if values.count(max(values)) == 1:
                break
        colours = rng.choice(len(COLOUR_NAMES), size=n, replace=False)
        bars = [
            {"label": BAR_LETTERS[k], "colour": COLOUR_NAMES[int(colours[k])], "value": values[k]}
            for k in range(n)
        ]
        background = sorted(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        facts: dict[str, Any] = {"bars": bars, "background": background}
        top = max(bars, key=lambda b: b["value"])
        if qtype == "tallest_label":
            return SampledQuestion(qtype, "Which bar is the tallest?", top["label"], facts)
        if qtype == "tallest_colour":
            return SampledQuestion(qtype, "What colour is the tallest bar?", top["colour"], facts)
        if qtype == "count":
            return SampledQuestion(qtype, "How many bars are there?", str(n), facts)
        b = bars[int(rng.integers(n))]
        facts["bar"] = b["label"]
        return SampledQuestion(qtype, f"What is the value of bar {b['label']}?", str(b["value"]), facts)

    def draw(self, facts: dict[str, Any], image_size: int) -> Image.Image:
        img = canvas(image_size, BACKGROUNDS[facts["background"]])
        d = ImageDraw.Draw(img)
        k = img.width / image_size  # supersampling factor
        g = plot_geometry(image_size, len(facts["bars"]))
        line = max(1, round(k * 0.5))
        for v in range(1, MAX_VALUE + 1):
            y = (g["base"] - v * g["unit"]) * k
            d.line((g["x0"] * k, y, g["x1"] * k, y), fill=GRID, width=line)
        font = _font(max(6, round(img.width * 0.13)))
        for bar, (bx0, bx1) in zip(facts["bars"], g["bars"], strict=True):
            ytop = g["base"] - bar["value"] * g["unit"]
            d.rectangle((bx0 * k, ytop * k, bx1 * k, g["base"] * k), fill=COLOURS[bar["colour"]])
            d.text(((bx0 + bx1) / 2 * k, (g["base"] + 1) * k), bar["label"], fill=INK, font=font, anchor="mt")
        d.line((g["x0"] * k, g["base"] * k, g["x1"] * k, g["base"] * k), fill=AXIS, width=2 * line)
        return finish(img, image_size)
