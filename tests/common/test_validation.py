"""Shared input checks: texts, counts and images refused with the field, the limit and a stable reason."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.common.config import LimitsSection
from services.common.errors import InvalidInput
from services.common.validation import (
    MAX_IMAGE_PIXELS,
    check_count,
    check_image_header,
    check_request_pixels,
    check_text_field,
    checked_image,
    decode_image,
)

LIMITS = LimitsSection(max_image_bytes=10_000, image_mime_types=("image/png", "image/jpeg"))


def encoded(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("L" if fmt == "PNG" else "RGB", size, 7).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("text", "reason"), [("", "EMPTY_TEXT"), (" \n", "EMPTY_TEXT"), ("x" * 11, "TEXT_TOO_LONG")]
)
def test_bad_texts(text, reason) -> None:
    with pytest.raises(InvalidInput, match=r"^prompts\[1\]\.text: ") as err:
        check_text_field("prompts[1].text", text, 10)

    assert err.value.reason == reason


def test_counts_name_the_limit_key() -> None:
    assert check_count("group_size", 4, 2, 4) == 4
    with pytest.raises(InvalidInput, match=r"group_size: 1, must be at least 2") as low:
        check_count("group_size", 1, 2, 4)
    with pytest.raises(InvalidInput, match=r"limit is 4 \(max_group_size\)") as high:
        check_count("group_size", 5, 2, 4, "max_group_size")

    assert (low.value.reason, high.value.reason) == ("TOO_FEW", "TOO_MANY")


@pytest.mark.parametrize(
    ("data", "mime", "reason"),
    [(b"", "image/png", "EMPTY_IMAGE"), (b"0" * 10_001, "image/png", "IMAGE_TOO_LARGE"),
     (encoded(), "image/gif", "BAD_MIME_TYPE")],
)
def test_image_header_checks(data, mime, reason) -> None:
    with pytest.raises(InvalidInput) as err:
        check_image_header(data, mime, LIMITS, "prompts[0].")

    assert err.value.reason == reason and str(err.value).startswith("prompts[0].image.")


@pytest.mark.parametrize(
    ("data", "mime", "reason"),
    [(b"not an image at all", "image/png", "UNDECODABLE_IMAGE"), (encoded("JPEG"), "image/png", "MIME_MISMATCH"),
     (encoded("PNG", (4097, 4097)), "image/png", "IMAGE_DIMENSIONS")],
)
def test_image_decoding_checks(data, mime, reason) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_image(data, mime)

    assert err.value.reason == reason


def test_a_good_image_decodes_to_rgb() -> None:
    image = checked_image(encoded("PNG", (8, 6)), "image/png", LIMITS)

    assert (image.mode, image.size) == ("RGB", (8, 6))
    assert 4097 * 4097 > MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("size", "limits", "reason"),
    [((300, 1), LimitsSection(), "IMAGE_ASPECT_RATIO"),
     ((1, 300), LimitsSection(), "IMAGE_ASPECT_RATIO"),
     ((100, 100), LimitsSection(max_image_pixels=9_999), "IMAGE_DIMENSIONS")],
)
def test_image_headers_are_checked_without_decoding(size, limits, reason) -> None:
    with pytest.raises(InvalidInput) as err:
        check_image_header(encoded("PNG", size), "image/png", limits)

    assert err.value.reason == reason


def test_image_header_gives_the_size_and_the_real_format_must_match() -> None:
    assert check_image_header(encoded("PNG", (200, 1)), "image/png", LIMITS) == (200, 1)
    with pytest.raises(InvalidInput) as err:
        check_image_header(encoded("JPEG"), "image/png", LIMITS)
    assert err.value.reason == "MIME_MISMATCH"


def test_request_pixels_are_bounded() -> None:
    limits = LimitsSection(max_request_pixels=100)

    assert check_request_pixels(100, limits) == 100
    with pytest.raises(InvalidInput, match=r"groups: 101 pixels in one request, limit is 100 \(limits.max_request_pixels\)"):
        check_request_pixels(101, limits, "groups")
