"""`shapes`: 1-4 coloured circles / squares / triangles on a light background.

Questions: how many shapes; colour of the (unique) <shape>; shape of the <colour> object (colours
are distinct within a scene); is object X left of object Y (yes/no, balanced). Positions are stored
as fractions of the image side, so the same facts draw at any image size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..vocab import BACKGROUNDS, COLOUR_NAMES, COLOURS, SHAPES, YES_NO
from .base import Benchmark, QuestionType, SampledQuestion, canvas, finish

MIN_OBJECTS, MAX_OBJECTS = 1, 4
MIN_DX = 0.07  # every pair of objects differs this much in x, so left/right is never ambiguous


class ShapesBenchmark(Benchmark):
    name = "shapes"
    qtypes = {
        "count": QuestionType(
            "count",
            "number",
            tuple(str(n) for n in range(MIN_OBJECTS, MAX_OBJECTS + 1)),
            ("there {verb} {answer_word} {noun} in the picture", "I count {answer_word} {noun}"),
        ),
        "colour_of_shape": QuestionType(
            "colour_of_shape",
            "word",
            COLOUR_NAMES,
            ("the {shape} is {answer}", "the {shape} in the picture is {answer}"),
        ),
        "shape_of_colour": QuestionType(
            "shape_of_colour",
            "word",
            SHAPES,
            ("the {colour} object is a {answer}", "the {colour} shape is a {answer}"),
        ),
        "left_of": QuestionType(
            "left_of",
            "yesno",
            YES_NO,
            ("the {c1} {s1} is {rel} the {c2} {s2}", "the {c1} {s1} lies {rel} the {c2} {s2}"),
        ),
    }

    def _objects(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """n non-overlapping objects with distinct colours and pairwise separated x centres."""
        while True:
            colours = rng.choice(len(COLOUR_NAMES), size=n, replace=False)
            objs: list[dict[str, Any]] = []
            for k in range(n):
                for _ in range(200):
                    r = round(float(rng.uniform(0.09, 0.13)), 3)
                    x = round(float(rng.uniform(r + 0.03, 1 - r - 0.03)), 3)
                    y = round(float(rng.uniform(r + 0.03, 1 - r - 0.03)), 3)
                    ok = all(
                        abs(x - o["x"]) >= MIN_DX and np.hypot(x - o["x"], y - o["y"]) > r + o["r"] + 0.04
                        for o in objs
                    )
                    if ok:
                        shape = SHAPES[int(rng.integers(len(SHAPES)))]
                        objs.append(
                            {"shape": shape, "colour": COLOUR_NAMES[int(colours[k])], "x": x, "y": y, "r": r}
                        )
                        break
                else:
                    break  # could not place this object: start the scene again
            if len(objs) == n:
                return objs

    def sample(self, rng: np.random.Generator, split: str) -> SampledQuestion:
        qtype = self.pick_qtype(rng)
        background = sorted(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        while True:
            lo = 2 if qtype == "left_of" else MIN_OBJECTS
            n = int(rng.integers(lo, MAX_OBJECTS + 1))
            objs = self._objects(rng, n)
            facts: dict[str, Any] = {"objects": objs, "background": background}
            if qtype == "count":
                return SampledQuestion(qtype, "How many shapes are there?", str(n), facts)
            if qtype == "shape_of_colour":
                o = objs[int(rng.integers(n))]
                facts["colour"] = o["colour"]
                return SampledQuestion(qtype, f"What shape is the {o['colour']} object?", o["shape"], facts)
            if qtype == "colour_of_shape":
                unique = [o for o in objs if sum(p["shape"] == o["shape"] for p in objs) == 1]
                if not unique:
                    continue
                o = unique[int(rng.integers(len(unique)))]
                facts["shape"] = o["shape"]
                return SampledQuestion(qtype, f"What colour is the {o['shape']}?", o["colour"], facts)
            i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
            a, b = objs[i], objs[j]
            facts.update(c1=a["colour"], s1=a["shape"], c2=b["colour"], s2=b["shape"])
            answer = "yes" if a["x"] < b["x"] else "no"
            q = f"Is the {a['colour']} {a['shape']} left of the {b['colour']} {b['shape']}?"
            return SampledQuestion(qtype, q, answer, facts)

    def reason_fields(self, qtype: str, facts: dict[str, Any], answer: str) -> dict[str, Any]:
        one = answer in ("1", "one")
        return {
            "noun": "shape" if one else "shapes",
            "verb": "is" if one else "are",
            "rel": "left of" if answer == "yes" else "right of",
        }

    def draw(self, facts: dict[str, Any], image_size: int) -> Image.Image:
        img = canvas(image_size, BACKGROUNDS[facts["background"]])
        d = ImageDraw.Draw(img)
        s = img.width
        for o in facts["objects"]:
            x, y, r = o["x"] * s, o["y"] * s, o["r"] * s
            fill = COLOURS[o["colour"]]
            if o["shape"] == "circle":
                d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            elif o["shape"] == "square":
                h = r * 0.85
                d.rectangle((x - h, y - h, x + h, y + h), fill=fill)
            else:
                d.polygon([(x, y - r), (x - r, y + 0.85 * r), (x + r, y + 0.85 * r)], fill=fill)
        return finish(img, image_size)
