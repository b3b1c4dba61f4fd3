"""Closed-form cases for normalisation, extraction, VQA accuracy, exact match, format and styles."""

from __future__ import annotations

import random

import pytest

from services.common.data.answers import (
    detect_styles,
    exact_match,
    extract_answer,
    format_ok,
    majority_answer,
    normalize_answer,
    render_answer,
    vqa_accuracy,
)
from services.common.data.records import VQAExample


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Three.", "3"),
        ("  Yes!! ", "yes"),
        ("The Red", "red"),
        ("an apple", "apple"),
        ("A", "a"),  # a bar label is not dropped as an article
        ("twenty one", "20 1"),
        ("Bar-B", "bar b"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("3 because there are three red circles", "3"),
        ("red, I think", "red"),
        ("blue.\nand more", "blue"),
        ("  yes  ", "yes"),
        ("two\nthree", "two"),
        ("B because bar B is the highest", "B"),
        ("", ""),
        ("\n\n", ""),
    ],
)
def test_extract_answer(response: str, expected: str) -> None:
    assert extract_answer(response) == expected


def test_vqa_accuracy_all_agree_number_word_matches_digit() -> None:
    assert vqa_accuracy("three", ["3"] * 10) == 1.0


def test_vqa_accuracy_two_of_ten() -> None:
    # left-out matching annotator: 1 match -> 1/3 (x2); others: 2 matches -> 2/3 (x8); mean = 0.6
    answers = ["4", "4"] + ["3"] * 8
    assert vqa_accuracy("4", answers) == pytest.approx(0.6)


def test_vqa_accuracy_three_of_ten() -> None:
    # matching left out: 2/3 (x3); others: min(1, 3/3) (x7) -> (2 + 7) / 10
    answers = ["4"] * 3 + ["3"] * 7
    assert vqa_accuracy("4 because I count four", answers) == pytest.approx(0.9)


def test_vqa_accuracy_no_match_and_empty() -> None:
    assert vqa_accuracy("5", ["3"] * 10) == 0.0
    assert vqa_accuracy("", ["3"] * 10) == 0.0


def test_vqa_accuracy_single_reference() -> None:
    assert vqa_accuracy("Red.", ["red"]) == 1.0
    assert vqa_accuracy("blue", ["red"]) == 0.0


def test_vqa_accuracy_needs_references() -> None:
    with pytest.raises(ValueError):
        vqa_accuracy("3", [])


def test_majority_and_exact_match() -> None:
    answers = ["three", "3", "4", "4", "3"]
    assert majority_answer(answers) == "3"
    assert exact_match("3 because ...", answers) == 1.0
    assert exact_match("four", answers) == 0.0


def test_majority_tie_takes_first_seen() -> None:
    assert majority_answer(["red", "blue", "blue", "red"]) == "red"


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        ("3", True),
        ("three because there are three shapes in the picture", True),
        ("", False),
        ("   ", False),
        ("3\nbecause", False),
        ("3, " + " ".join(["word"] * 16), False),  # 17 words in all
        ("3, " + " ".join(["word"] * 15), True),  # exactly 16 words
        ("The answer is clearly 3", False),  # does not start with a short answer
    ],
)
def test_format_ok(response: str, ok: bool) -> None:
    assert format_ok(response) is ok


@pytest.mark.parametrize(
    ("response", "styles"),
    [
        ("3", {"digits"}),
        ("three", {"word"}),
        ("red", {"word", "digits"}),
        ("3 because I count three shapes", {"justified"}),
        ("3, and I am quite sure about it after looking very carefully at every single part of it", set()),
    ],
)
def test_detect_styles(response: str, styles: set[str]) -> None:
    assert set(detect_styles(response)) == styles


def _count_example() -> VQAExample:
    return VQAExample(
        id="shapes-test-00000",
        benchmark="shapes",
        split="test",
        image="images/x.png",
        question="How many shapes are there?",
        answers=["3"] * 10,
        answer_type="number",
        meta={"qtype": "count", "answer": "3", "objects": [], "background": "white"},
    )


def test_render_answer_styles() -> None:
    ex = _count_example()
    assert render_answer(ex, "word") == "three"
    assert render_answer(ex, "digits") == "3"
    assert render_answer(ex, "justified") == "3 because there are three shapes in the picture"
    assert render_answer(ex, "justified", answer="1") == "1 because there is one shape in the picture"
    verbose = render_answer(ex, "verbose", random.Random(0))
    assert verbose.startswith("three, ") and not format_ok(verbose)


def test_render_answer_is_correct_in_every_client_style() -> None:
    ex = _count_example()
    for style in ("word", "digits", "justified"):
        text = render_answer(ex, style, random.Random(1))
        assert vqa_accuracy(text, ex.answers) == 1.0
        assert format_ok(text)
        assert style in detect_styles(text)


def test_render_answer_unknown_style() -> None:
    with pytest.raises(ValueError, match="supported"):
        render_answer(_count_example(), "fancy")


def test_render_answer_external_example_uses_generic_reason() -> None:
    ex = VQAExample(
        id="x",
        benchmark="vqav2",
        split="val",
        image="a.jpg",
        question="What?",
        answers=["dog"],
        answer_type="word",
    )
    assert render_answer(ex, "justified") == "dog because that is what the picture shows"
