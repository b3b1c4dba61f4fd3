"""Records round trip, chance table, corpus coverage."""

from __future__ import annotations

import re

import pytest

from services.common.data.answers import STYLES, render_answer
from services.common.data.chance import CHANCE, benchmark_chance, blind_baseline, chance_level
from services.common.data.corpus import corpus_texts
from services.common.data.records import PreferencePair, RecordError, VQAExample
from services.common.data.world import World


def test_records_round_trip(world: World) -> None:
    ex = world.examples("charts", "train")[3]
    assert VQAExample.from_json(ex.to_json()) == ex
    p = world.pairs("bank", "train")[0]
    assert PreferencePair.from_json(p.to_json()) == p


def test_record_errors_name_keys() -> None:
    with pytest.raises(RecordError, match=r"missing keys \['rejected'\]"):
        PreferencePair.from_dict(
            {
                "id": "1",
                "client": "c",
                "benchmark": "b",
                "image": "i",
                "question": "q",
                "chosen": "a",
                "example_id": "e",
            }
        )
    with pytest.raises(RecordError, match="invalid JSON"):
        VQAExample.from_json("{")


def test_chance_table_closed_form() -> None:
    assert CHANCE["shapes"] == {
        "count": 0.25,
        "colour_of_shape": pytest.approx(1 / 6),
        "shape_of_colour": pytest.approx(1 / 3),
        "left_of": 0.5,
    }
    assert CHANCE["digits"] == {"which": 0.1, "parity": 0.5, "plus_one": 0.1}
    assert CHANCE["charts"] == {
        "tallest_label": 0.2,
        "tallest_colour": pytest.approx(1 / 6),
        "count": pytest.approx(1 / 3),
        "value": pytest.approx(1 / 9),
    }


def test_chance_level_per_example_and_external() -> None:
    ex = VQAExample(
        id="x", benchmark="vqav2", split="val", image="a", question="q", answers=["yes"], answer_type="yesno"
    )
    assert chance_level(ex) == 0.5
    assert chance_level(VQAExample(**{**ex.to_dict(), "answer_type": "word"})) is None


def test_benchmark_chance_and_blind_baseline(world: World) -> None:
    chance = benchmark_chance(world.examples(None, "test"))
    assert set(chance) == set(world.benchmarks)
    for b, c in chance.items():
        assert min(CHANCE[b].values()) <= c <= max(CHANCE[b].values())
    blind = blind_baseline(world.examples(None, "train"), world.examples(None, "test"))
    assert all(0.0 <= v < 0.6 for v in blind.values())


def test_corpus_is_deterministic_and_covers_world_vocabulary(world: World) -> None:
    texts = corpus_texts()
    assert texts == corpus_texts() and len(texts) == len(set(texts))
    vocab = {w for t in texts for w in re.findall(r"[A-Za-z]+|\d+", t)}
    seen: set[str] = set()
    for ex in world.examples(None, "test"):
        seen.update(re.findall(r"[A-Za-z]+|\d+", ex.question))
        for s in (*STYLES, "verbose"):
            seen.update(re.findall(r"[A-Za-z]+|\d+", render_answer(ex, s)))
    assert seen <= vocab, sorted(seen - vocab)
    templates = {
        re.sub(r"(red|green|blue|yellow|purple|orange|circle|square|triangle|[A-E])\b", "X", t)
        for t in texts
        if t.endswith("?")
    }
    assert len(templates) == 11  # one per question type
