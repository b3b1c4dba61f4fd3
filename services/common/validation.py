"""Input checks every MoR service applies to what callers send: texts, counts and encoded images.

Domain-free and grpc-free: each check raises `InvalidInput` whose message names the field (with the
caller's prefix, e.g. ``prompts[2].``), the limit and the config key that sets it, and whose
`reason` is a stable code a client can branch on. Limits come from the service's `LimitsSection`,
so every service refuses the same inputs with the same words and reasons.

Images: `check_image_header` checks the encoded size and declared type, then reads only the
image's header (no pixel data) for its real format, its dimensions, its pixel count and its aspect
ratio; a service adds up the pixels of a request (`check_request_pixels`) and admits it *before*
`decode_image` allocates any bitmap. A decompression bomb (a few KB of PNG that decodes to 50 MB)
is thus refused for what it would cost, not after paying for it. Header reading and decoding are
CPU work on caller bytes: services run them in worker threads, never on the event loop.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from services.common.config import LimitsSection
from services.common.errors import InvalidInput, shown

MAX_IMAGE_PIXELS = 4096 * 4096  # decoded size cap, whatever the compressed size
FORMAT_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


def check_text_field(field: str, text: str, max_chars: int, limit_key: str = "limits.max_prompt_chars") -> str:
    """`text` when it is non-blank and at most `max_chars` characters long."""
    if not text.strip():
        raise InvalidInput(f"{field}: must not be empty", reason="EMPTY_TEXT")
    if len(text) > max_chars:
        raise InvalidInput(f"{field}: {len(text)} characters, limit is {max_chars} ({limit_key})", reason="TEXT_TOO_LONG")
    return text


def check_count(field: str, count: int, low: int, high: int, limit_key: str = "") -> int:
    """`count` when low <= count <= high."""
    if count < low:
        raise InvalidInput(f"{field}: {count}, must be at least {low}", reason="TOO_FEW")
    if count > high:
        key = f" ({limit_key})" if limit_key else ""
        raise InvalidInput(f"{field}: {count}, limit is {high}{key}", reason="TOO_MANY")
    return count


def check_image_header(data: bytes, mime_type: str, limits: LimitsSection, where: str = "") -> tuple[int, int]:
    """(width, height) of an encoded image whose size, declared and real type, pixel count and
    aspect ratio are within `limits`; reads the header only, decodes no pixel."""
    if not data:
        raise InvalidInput(f"{where}image.data: empty (leave image unset for a text-only prompt)", reason="EMPTY_IMAGE")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"{where}image.data: {len(data)} bytes, limit is {limits.max_image_bytes} "
                           "(limits.max_image_bytes)", reason="IMAGE_TOO_LARGE")
    if mime_type not in limits.image_mime_types:
        raise InvalidInput(f"{where}image.mime_type: {shown(mime_type)} is not accepted; allowed: "
                           f"{', '.join(limits.image_mime_types)}", reason="BAD_MIME_TYPE")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header, not the pixels
                _check_format(image, mime_type, where)
                width, height = image.size
    except InvalidInput:
        raise
    except _DECODE_ERRORS as exc:
        raise _undecodable(mime_type, where, exc) from None
    pixels = width * height
    if width < 1 or height < 1 or pixels > limits.max_image_pixels:
        raise InvalidInput(f"{where}image.data: {width}x{height} pixels, limit is {limits.max_image_pixels} pixels "
                           "(limits.max_image_pixels)", reason="IMAGE_DIMENSIONS")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_image_aspect_ratio:
        raise InvalidInput(f"{where}image.data: {width}x{height} pixels has aspect ratio {ratio:.0f}, limit is "
                           f"{limits.max_image_aspect_ratio:g} (limits.max_image_aspect_ratio)", reason="IMAGE_ASPECT_RATIO")
    return width, height


def check_request_pixels(pixels: int, limits: LimitsSection, field: str = "images") -> int:
    """`pixels` (the sum over a request's images) when within limits.max_request_pixels."""
    if pixels > limits.max_request_pixels:
        raise InvalidInput(f"{field}: {pixels} pixels in one request, limit is {limits.max_request_pixels} "
                           "(limits.max_request_pixels); send fewer or smaller images", reason="REQUEST_PIXELS")
    return pixels


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def _check_format(image: Image.Image, mime_type: str, where: str) -> None:
    actual = FORMAT_MIME.get(image.format or "", f"image/{(image.format or 'unknown').lower()}")
    if actual != mime_type:
        raise InvalidInput(f"{where}image.data: is {shown(actual)}, but image.mime_type says {mime_type}",
                           reason="MIME_MISMATCH")


def _undecodable(mime_type: str, where: str, exc: BaseException) -> InvalidInput:
    return InvalidInput(f"{where}image.data: cannot be decoded as {mime_type} ({type(exc).__name__})",
                        reason="UNDECODABLE_IMAGE")


def decode_image(data: bytes, mime_type: str, where: str = "", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image whose header checks passed into RGB; its real format must match `mime_type`
    (checked again, with the absolute `max_pixels` cap, so no caller can decode a bomb by mistake)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_format(image, mime_type, where)
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise InvalidInput(f"{where}image.data: {width}x{height} pixels, limit is {max_pixels} pixels",
                                   reason="IMAGE_DIMENSIONS")
            image.load()
            return image.convert("RGB")
    except InvalidInput:
        raise
    except _DECODE_ERRORS as exc:
        raise _undecodable(mime_type, where, exc) from None


def checked_image(data: bytes, mime_type: str, limits: LimitsSection, where: str = "") -> Image.Image:
    """`check_image_header` then `decode_image`: a sent image, validated and decoded."""
    check_image_header(data, mime_type, limits, where)
    return decode_image(data, mime_type, where, limits.max_image_pixels)


__all__ = [
    "FORMAT_MIME",
    "MAX_IMAGE_PIXELS",
    "check_count",
    "check_image_header",
    "check_request_pixels",
    "check_text_field",
    "checked_image",
    "decode_image",
]
