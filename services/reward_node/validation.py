"""Input checks of a Score / ScoreBatch request against the node's limits (LimitsSection).

Image checks are the shared ones (services.common.validation); the text checks here give the
node's own, more specific reasons (EMPTY_PROMPT, RESPONSE_TOO_LONG, ...). Every failure is an
``InvalidInput`` (INVALID_ARGUMENT on the wire) whose message names the field (``responses[3]``,
``groups[1].image.mime_type``, ...), the limit and the config key that sets it, and whose
``reason`` is a stable code a client can branch on. Text checks run first; then
``image_sizes`` reads every image's header (dimensions, no pixels), so the node can bound and
admit the call's pixels before ``decode_groups`` decodes anything (no decompression bombs). Both
image steps are CPU work: the node runs them in a worker thread.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from services.common.config import LimitsSection
from services.common.errors import InvalidInput
from services.common.validation import check_image_header, checked_image, decode_image


@dataclass(frozen=True)
class GroupInput:
    """One group as received: the prompt, its answers and the encoded image (None: text-only)."""

    prompt: str
    responses: Sequence[str]
    image_data: bytes | None = None
    mime_type: str = ""
    group_id: str = ""


@dataclass(frozen=True)
class ValidGroup:
    """A group that passed every check, with its image decoded (RGB) or None."""

    prompt: str
    responses: list[str]
    image: Image.Image | None
    group_id: str = ""


def _bad(message: str, reason: str) -> InvalidInput:
    return InvalidInput(message, reason=reason)


def check_text(group: GroupInput, limits: LimitsSection, where: str = "") -> None:
    """Prompt and responses: present, non-blank, within their length limits and count."""
    if not group.prompt.strip():
        raise _bad(f"{where}prompt: must not be empty", "EMPTY_PROMPT")
    if len(group.prompt) > limits.max_prompt_chars:
        raise _bad(f"{where}prompt: {len(group.prompt)} characters, limit is {limits.max_prompt_chars} "
                   "(limits.max_prompt_chars)", "PROMPT_TOO_LONG")
    n = len(group.responses)
    if n == 0:
        raise _bad(f"{where}responses: at least one response is required", "NO_RESPONSES")
    if n > limits.max_responses:
        raise _bad(f"{where}responses: {n} responses, limit is {limits.max_responses} (limits.max_responses)",
                   "TOO_MANY_RESPONSES")
    for i, r in enumerate(group.responses):
        if not r.strip():
            raise _bad(f"{where}responses[{i}]: must not be empty", "EMPTY_RESPONSE")
        if len(r) > limits.max_response_chars:
            raise _bad(f"{where}responses[{i}]: {len(r)} characters, limit is {limits.max_response_chars} "
                       "(limits.max_response_chars)", "RESPONSE_TOO_LONG")


def validate_group(group: GroupInput, limits: LimitsSection, where: str = "") -> ValidGroup:
    """All checks of one group; returns it with its image decoded. ``where`` prefixes field names."""
    check_text(group, limits, where)
    image = None if group.image_data is None else checked_image(group.image_data, group.mime_type, limits, where)
    return ValidGroup(group.prompt, list(group.responses), image, group.group_id)


def group_prefixes(n_groups: int, batch_call: bool) -> list[str]:
    """Field-name prefix of each group: ``groups[i].`` in ScoreBatch, none in Score."""
    return [f"groups[{i}]." if batch_call else "" for i in range(n_groups)]


def image_sizes(groups: Sequence[GroupInput], limits: LimitsSection, prefixes: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) of every group's image, from the headers only (each checked against limits)."""
    return [check_image_header(g.image_data, g.mime_type, limits, where)
            for g, where in zip(groups, prefixes, strict=True) if g.image_data is not None]


def decode_groups(groups: Sequence[GroupInput], limits: LimitsSection, prefixes: Sequence[str]) -> list[ValidGroup]:
    """Groups whose texts and image headers passed, with their images decoded (RGB)."""
    return [
        ValidGroup(g.prompt, list(g.responses),
                   None if g.image_data is None else decode_image(g.image_data, g.mime_type, where, limits.max_image_pixels),
                   g.group_id)
        for g, where in zip(groups, prefixes, strict=True)
    ]


def check_group_count(n_groups: int, limits: LimitsSection) -> None:
    """ScoreBatch: between 1 and limits.max_batch_groups groups."""
    if n_groups == 0:
        raise _bad("groups: at least one group is required", "NO_GROUPS")
    if n_groups > limits.max_batch_groups:
        raise _bad(f"groups: {n_groups} groups, limit is {limits.max_batch_groups} (limits.max_batch_groups)",
                   "TOO_MANY_GROUPS")


__all__ = [
    "GroupInput",
    "ValidGroup",
    "check_group_count",
    "check_text",
    "decode_groups",
    "group_prefixes",
    "image_sizes",
    "validate_group",
]
