"""Closed vocabularies of the synthetic world: colours, shapes, bar letters, number words.

Everything that generators draw or answers mention comes from these tables, so the answer space of
every question type is known in advance (that is what makes chance levels and the oracle exact).
This module imports nothing from the package: generators and the answer helpers both build on it.
"""

from __future__ import annotations

#: Number words understood by the normaliser ("three" -> "3") and written by the "word" style.
NUMBER_WORDS: dict[str, str] = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
}
DIGIT_TO_WORD: dict[str, str] = {v: k for k, v in NUMBER_WORDS.items()}

#: Saturated, well separated colours used for shapes and bars (name -> RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 135, 30),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

#: Light backgrounds (never confused with an object colour).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "cream": (250, 245, 230),
    "mist": (235, 240, 248),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BAR_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")
YES_NO: tuple[str, ...] = ("yes", "no")


def number_word(value: str | int) -> str:
    """'3' -> 'three'; a value with no word form is returned unchanged as a string."""
    return DIGIT_TO_WORD.get(str(value), str(value))


