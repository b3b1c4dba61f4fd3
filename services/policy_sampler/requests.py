"""What a Generate call asks for, before and after validation. No grpc, no torch.

The servicer turns the protobuf request into a `GenerateCall` (plain values, images still encoded);
`validate_generate` checks it against the sampler's `SamplerLimits` and fills unset sampling
values from the defaults, giving a `GenerateJob` a backend can run. Every refusal is an
`InvalidInput` whose message names the field and the limit.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from services.common.config import LimitsSection, SamplerSettings
from services.common.config.services import SamplingDefaultsSection
from services.common.errors import InvalidInput, shown
from services.common.validation import check_count, check_text_field, checked_image

# A group of one has no baseline for a group-relative advantage (GRPO), so the sampler refuses it.
MIN_GROUP_SIZE = 2
SEED_MODULUS = 2**63


@dataclass(frozen=True)
class RawImage:
    """An image as sent: encoded bytes and their declared MIME type."""

    data: bytes
    mime_type: str


@dataclass(frozen=True)
class RawPrompt:
    """One prompt as sent."""

    prompt_id: str
    text: str
    image: RawImage | None = None


@dataclass(frozen=True)
class RawSampling:
    """Sampling parameters as sent: None / 0 mean "use the sampler's default" (see common.proto)."""

    temperature: float | None = None
    top_p: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class GenerateCall:
    """A Generate request in plain values."""

    prompts: tuple[RawPrompt, ...]
    group_size: int
    sampling: RawSampling = RawSampling()
    expected_policy_version: int | None = None
    request_id: str = ""


@dataclass(frozen=True)
class PromptInput:
    """A validated prompt: the text and the decoded RGB image (or None)."""

    prompt_id: str
    text: str
    image: Image.Image | None


@dataclass(frozen=True)
class SamplingOptions:
    """Resolved sampling: every value set. temperature 0 means greedy; top_p 1 and top_k 0 disable
    truncation. `seed` is always set (a fresh random one when the caller gave none)."""

    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerateJob:
    """A validated Generate call, ready for a backend."""

    prompts: tuple[PromptInput, ...]
    group_size: int
    sampling: SamplingOptions
    expected_policy_version: int | None
    request_id: str

    @property
    def num_samples(self) -> int:
        """Completions this job produces (prompts x group size)."""
        return len(self.prompts) * self.group_size


@dataclass(frozen=True)
class SamplerLimits:
    """What one Generate call may ask for (published in GetInfo)."""

    max_prompts: int
    max_group_size: int
    max_new_tokens: int
    inputs: LimitsSection

    @classmethod
    def from_settings(cls, settings: SamplerSettings) -> SamplerLimits:
        return cls(settings.max_prompts, settings.max_group_size, settings.max_new_tokens, settings.limits)


def resolve_sampling(raw: RawSampling, defaults: SamplingDefaultsSection, max_new_tokens: int) -> SamplingOptions:
    """Fill unset values from `defaults` and check every value (InvalidInput names the field)."""
    temperature = defaults.temperature if raw.temperature is None else float(raw.temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(f"sampling.temperature is {raw.temperature}; it must be >= 0 (0 is greedy)",
                           reason="BAD_SAMPLING")
    top_p = defaults.top_p if raw.top_p == 0 else float(raw.top_p)
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InvalidInput(f"sampling.top_p is {raw.top_p}; it must be in (0, 1] (0 means the default)",
                           reason="BAD_SAMPLING")
    top_k = defaults.top_k if raw.top_k == 0 else int(raw.top_k)
    if top_k < 0:
        raise InvalidInput(f"sampling.top_k is {raw.top_k}; it must be >= 0 (0 disables top-k)", reason="BAD_SAMPLING")
    tokens = defaults.max_new_tokens if raw.max_new_tokens == 0 else int(raw.max_new_tokens)
    check_count("sampling.max_new_tokens", tokens, 1, max_new_tokens, "max_new_tokens")
    seed = secrets.randbelow(SEED_MODULUS) if raw.seed is None else int(raw.seed) % SEED_MODULUS
    return SamplingOptions(temperature, top_p, top_k, tokens, seed)


def _prompt(index: int, raw: RawPrompt, limits: LimitsSection) -> PromptInput:
    where = f"prompts[{index}]."
    check_text_field(f"{where}text", raw.text, limits.max_prompt_chars)
    image = None
    if raw.image is not None:
        image = checked_image(raw.image.data, raw.image.mime_type, limits, where)
    return PromptInput(raw.prompt_id, raw.text, image)


def validate_generate(call: GenerateCall, limits: SamplerLimits, defaults: SamplingDefaultsSection) -> GenerateJob:
    """Check a Generate call against the limits and resolve its sampling parameters."""
    if not call.prompts:
        raise InvalidInput("prompts: at least one prompt is required", reason="TOO_FEW")
    check_count("prompts", len(call.prompts), 1, limits.max_prompts, "max_prompts")
    check_count("group_size", call.group_size, MIN_GROUP_SIZE, limits.max_group_size, "max_group_size")
    _unique_ids([p.prompt_id for p in call.prompts])
    if call.expected_policy_version is not None and call.expected_policy_version < 0:
        raise InvalidInput(f"expected_policy_version is {call.expected_policy_version}; versions are >= 0",
                           reason="BAD_VERSION")
    sampling = resolve_sampling(call.sampling, defaults, limits.max_new_tokens)
    prompts = tuple(_prompt(i, p, limits.inputs) for i, p in enumerate(call.prompts))
    return GenerateJob(prompts, call.group_size, sampling, call.expected_policy_version, call.request_id)


def _unique_ids(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, pid in enumerate(ids):
        if pid in seen:
            raise InvalidInput(f"prompts[{i}].prompt_id {shown(pid)} repeats an earlier prompt_id; ids must be unique",
                               reason="DUPLICATE_ID")
        seen.add(pid)


__all__ = [
    "MIN_GROUP_SIZE",
    "GenerateCall",
    "GenerateJob",
    "PromptInput",
    "RawImage",
    "RawPrompt",
    "RawSampling",
    "SamplerLimits",
    "SamplingOptions",
    "resolve_sampling",
    "validate_generate",
]
