"""Generators: answers follow from the stored facts, and the picture shows those facts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.common.data.benchmarks import BENCHMARKS, UnknownBenchmark, get_benchmark
from services.common.data.benchmarks.charts import MAX_VALUE, plot_geometry
from services.common.data.benchmarks.digits import source_indices, source_label
from services.common.data.generate import generate_examples
from services.common.data.vocab import COLOURS
from services.common.data.world import World


def _examples(name: str, n: int = 120, size: int = 64):
    return list(
        generate_examples(name, "train", n, seed=11, image_size=size, n_references=10, annotator_noise=0.05)
    )


def _pixels(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)


def test_unknown_benchmark_lists_supported() -> None:
    with pytest.raises(UnknownBenchmark, match="supported: shapes, digits, charts"):
        get_benchmark("maps")


def test_every_question_type_is_generated() -> None:
    for name in BENCHMARKS:
        seen = {g.example.meta["qtype"] for g in _examples(name, 80, 32)}
        assert seen == set(get_benchmark(name).qtypes), name


def test_answers_are_in_answer_space_and_majority_is_canonical() -> None:
    from services.common.data.answers import majority_answer, normalize_answer

    for name in BENCHMARKS:
        bench = get_benchmark(name)
        for g in _examples(name, 80, 32):
            ex = g.example
            assert ex.meta["answer"] in bench.qtypes[ex.meta["qtype"]].answer_space
            assert majority_answer(ex.answers) == normalize_answer(ex.meta["answer"])
            assert ex.answer_type == bench.qtypes[ex.meta["qtype"]].answer_type


def test_stored_png_is_the_drawing_of_its_facts(world: World) -> None:
    for name in world.benchmarks:
        bench = get_benchmark(name)
        for ex in world.examples(name, "test")[:5]:
            drawn = np.asarray(bench.draw(ex.meta, world.config.image_size))
            assert np.array_equal(np.asarray(world.load_image(ex.image)), drawn), ex.id


def test_charts_answers_follow_bar_values() -> None:
    for g in _examples("charts"):
        m, bars = g.example.meta, g.example.meta["bars"]
        values = [b["value"] for b in bars]
        assert 3 <= len(bars) <= 5 and all(1 <= v <= MAX_VALUE for v in values)
        assert values.count(max(values)) == 1
        assert [b["label"] for b in bars] == list("ABCDE")[: len(bars)]
        assert len({b["colour"] for b in bars}) == len(bars)
        top = max(bars, key=lambda b: b["value"])
        expected = {
            "tallest_label": top["label"],
            "tallest_colour": top["colour"],
            "count": str(len(bars)),
            "value": next((str(b["value"]) for b in bars if b["label"] == m.get("bar")), None),
        }[m["qtype"]]
        assert m["answer"] == expected


def test_chart_bar_heights_in_picture_match_values() -> None:
    for g in _examples("charts", 40):
        bars = g.example.meta["bars"]
        px = _pixels(g.png)
        geo = plot_geometry(64, len(bars))
        for bar, (x0, x1) in zip(bars, geo["bars"], strict=True):
            col = px[:, int((x0 + x1) / 2)]
            hit = np.where(np.abs(col - np.array(COLOURS[bar["colour"]])).sum(axis=1) < 60)[0]
            height = geo["base"] - hit.min()
            assert abs(height - bar["value"] * geo["unit"]) <= 1.5, (g.example.id, bar)


def test_shapes_answers_follow_objects() -> None:
    for g in _examples("shapes"):
        m, objs = g.example.meta, g.example.meta["objects"]
        assert 1 <= len(objs) <= 4 and len({o["colour"] for o in objs}) == len(objs)
        by_colour = {o["colour"]: o for o in objs}
        if m["qtype"] == "count":
            assert m["answer"] == str(len(objs))
        elif m["qtype"] == "shape_of_colour":
            assert m["answer"] == by_colour[m["colour"]]["shape"]
        elif m["qtype"] == "colour_of_shape":
            matches = [o for o in objs if o["shape"] == m["shape"]]
            assert len(matches) == 1 and m["answer"] == matches[0]["colour"]
        else:
            left = by_colour[m["c1"]]["x"] < by_colour[m["c2"]]["x"]
            assert m["answer"] == ("yes" if left else "no")


def test_shapes_picture_shows_each_object_colour_at_its_centre() -> None:
    for g in _examples("shapes", 40):
        px = _pixels(g.png)
        for o in g.example.meta["objects"]:
            y, x = int(o["y"] * 64), int(o["x"] * 64)
            assert np.abs(px[y, x] - np.array(COLOURS[o["colour"]])).sum() < 40, (g.example.id, o)


def test_left_of_answers_are_balanced() -> None:
    answers = [
        g.example.meta["answer"] for g in _examples("shapes", 400, 32) if g.example.meta["qtype"] == "left_of"
    ]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_digits_answers_follow_source_label() -> None:
    for g in _examples("digits"):
        m = g.example.meta
        assert m["digit"] == source_label(m["source_index"])
        expected = {
            "which": str(m["digit"]),
            "parity": "even" if m["digit"] % 2 == 0 else "odd",
            "plus_one": str(m["digit"] + 1),
        }[m["qtype"]]
        assert m["answer"] == expected


def test_digits_train_and_test_sources_are_disjoint() -> None:
    train, test = set(source_indices("train").tolist()), set(source_indices("test").tolist())
    assert not train & test and len(train) + len(test) == 1797
    gens = generate_examples("digits", "test", 30, seed=1, image_size=32, n_references=4, annotator_noise=0.0)
    assert all(g.example.meta["source_index"] in test for g in gens)


def test_digits_picture_is_a_blend_of_background_and_ink() -> None:
    from services.common.data.benchmarks.digits import INKS
    from services.common.data.vocab import BACKGROUNDS

    for g in _examples("digits", 20):
        px = _pixels(g.png).reshape(-1, 3).astype(float)
        bg = np.array(BACKGROUNDS[g.example.meta["background"]], dtype=float)
        ink = np.array(INKS[g.example.meta["ink"]], dtype=float)
        d = ink - bg
        a = np.clip(((px - bg) @ d) / (d @ d), 0, 1)
        residual = np.abs(px - (bg + a[:, None] * d)).max()
        assert residual <= 2.0, g.example.id  # every pixel lies between background and ink
        assert (a > 0.5).sum() >= 40, g.example.id  # and the glyph covers a real area
