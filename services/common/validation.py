"""Input checks every MoR service applies to what callers send: texts, counts and encoded images.

Domain-free and grpc-free: each check raises `InvalidInput` whose message names the field (with the
caller's prefix, e.g. ``prompts[2].``), the limit and the config key that sets it, and whose
`reason` is a stable code a client can branch on. Limits come from the service's `LimitsSection`,
so every service refuses the same inputs with the same words and reasons.

Images: `check_image_header` looks at size and declared type before any decoding; `decode_image`
then decodes, checking the real format against the declared one and the pixel count (from the
header, before the bitmap is allocated: no decompression bombs).
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


def check_image_header(data: bytes, mime_type: str, limits: LimitsSection, where: str = "") -> None:
    """Size and declared type of an encoded image, before any decoding."""
    if not data:
        raise InvalidInput(f"{where}image.data: empty (leave image unset for a text-only prompt)", reason="EMPTY_IMAGE")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"{where}image.data: {len(data)} bytes, limit is {limits.max_image_bytes} "
                           "(limits.max_image_bytes)", reason="IMAGE_TOO_LARGE")
    if mime_type not in limits.image_mime_types:
        raise InvalidInput(f"{where}image.mime_type: {shown(mime_type)} is not accepted; allowed: "
                           f"{', '.join(limits.image_mime_types)}", reason="BAD_MIME_TYPE")


def decode_image(data: bytes, mime_type: str, where: str = "") -> Image.Image:
    """Decode an image whose header checks passed into RGB; its real format must match `mime_type`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            actual = FORMAT_MIME.get(image.format or "", f"image/{(image.format or 'unknown').lower()}")
            if actual != mime_type:
                raise InvalidInput(f"{where}image.data: is {actual}, but image.mime_type says {mime_type}",
                                   reason="MIME_MISMATCH")
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
                raise InvalidInput(f"{where}image.data: {width}x{height} pixels, limit is {MAX_IMAGE_PIXELS} pixels",
                                   reason="IMAGE_DIMENSIONS")
            image.load()
            return image.convert("RGB")
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"{where}image.data: cannot be decoded as {mime_type} ({type(exc).__name__})",
                           reason="UNDECODABLE_IMAGE") from None


def checked_image(data: bytes, mime_type: str, limits: LimitsSection, where: str = "") -> Image.Image:
    """`check_image_header` then `decode_image`: a sent image, validated and decoded."""
    check_image_header(data, mime_type, limits, where)
    return decode_image(data, mime_type, where)


__all__ = [
    "FORMAT_MIME",
    "MAX_IMAGE_PIXELS",
    "check_count",
    "check_image_header",
    "check_text_field",
    "checked_image",
    "decode_image",
]
