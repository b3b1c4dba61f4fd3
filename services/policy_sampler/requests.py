"""What a Generate call asks for, before and after validation. No grpc, no torch.

The servicer turns the protobuf request into a `GenerateCall` (plain values, images still encoded);
`validate_generate` checks it against the sampler's `SamplerLimits` and fills unset sampling
values from the defaults, giving a `GenerateJob` a backend can run. Every refusal is an
`InvalidInput` whose message names the field and the limit.

Validation runs in two steps so that the sampler can admit a call before paying for it:
`check_generate` does every check that allocates no bitmap (texts against the model's
`PromptRules`, token counts, sampling values, image headers and the call's pixels) and
`decode_prompts` then decodes the images.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from services.common.config import LimitsSection, SamplerSettings
from services.common.config.services import SamplingDefaultsSection
from services.common.errors import InvalidInput, shown
from services.common.validation import (
    check_count,
    check_image_header,
    check_request_pixels,
    check_text_field,
    decode_image,
)

# A group of one has no baseline for a group-relative advantage (GRPO), so the sampler refuses it.
MIN_GROUP_SIZE = 2
SEED_MODULUS = 2**63
# Smallest positive temperature. Logits are divided by it: below ~1e-38 float32 overflows to inf and
# sampling fails on NaN probabilities; well before that the distribution is greedy anyway.
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class PromptRules:
    """What only the loaded model knows about prompt texts (from its tokenizer).

    `reserved_tokens`: control-token texts a prompt may not spell (`<|image_pad|>`, `<|im_start|>`,
    ...): the chat template would read them as extra image placeholders or turn markers.
    `count_tokens`: the number of tokens of a text (limits are in tokens, not characters: one
    emoji is four tokens)."""

    reserved_tokens: tuple[str, ...] = ()
    count_tokens: Callable[[str], int] | None = field(default=None, compare=False)

    @classmethod
    def of_tokenizer(cls, tokenizer: object) -> PromptRules:
        """Rules of a transformers tokenizer: every added or special token is reserved."""
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = set(getattr(tokenizer, "all_special_tokens", ())) | {t.content for t in added.values()}

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # type: ignore[operator]

        return cls(tuple(sorted(s for s in special if s)), count)


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
    max_prompt_tokens: int = 1024
    max_request_tokens: int = 262_144

    @classmethod
    def from_settings(cls, settings: SamplerSettings) -> SamplerLimits:
        return cls(settings.max_prompts, settings.max_group_size, settings.max_new_tokens, settings.limits,
                   settings.max_prompt_tokens, settings.max_request_tokens)


@dataclass(frozen=True)
class CheckedCall:
    """A call that passed every check but image decoding: its resolved sampling, the tokens of each
    prompt text, and the pixels its images will take once decoded."""

    call: GenerateCall
    sampling: SamplingOptions
    prompt_tokens: tuple[int, ...]
    pixels: int
    limits: SamplerLimits

    @property
    def num_samples(self) -> int:
        return len(self.call.prompts) * self.call.group_size


def resolve_sampling(raw: RawSampling, defaults: SamplingDefaultsSection, max_new_tokens: int) -> SamplingOptions:
    """Fill unset values from `defaults` and check every value (InvalidInput names the field)."""
    temperature = defaults.temperature if raw.temperature is None else float(raw.temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(f"sampling.temperature is {raw.temperature}; it must be >= 0 (0 is greedy)",
                           reason="BAD_SAMPLING")
    if 0 < temperature < MIN_TEMPERATURE:
        raise InvalidInput(f"sampling.temperature is {raw.temperature}; it must be 0 (greedy) or at least "
                           f"{MIN_TEMPERATURE:g}", reason="BAD_SAMPLING")
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


def _check_text(index: int, raw: RawPrompt, limits: SamplerLimits, rules: PromptRules) -> int:
    """Tokens of a prompt's text (characters when no rules count tokens), after its checks."""
    where = f"prompts[{index}].text"
    check_text_field(where, raw.text, limits.inputs.max_prompt_chars)  # cheap bound before tokenising
    for token in rules.reserved_tokens:
        if token in raw.text:
            raise InvalidInput(f"{where}: contains the model's control token {shown(token)}; prompts are plain text "
                               "(send the image in prompts[].image)", reason="RESERVED_TOKEN")
    if rules.count_tokens is None:
        return len(raw.text)
    tokens = rules.count_tokens(raw.text)
    if tokens > limits.max_prompt_tokens:
        raise InvalidInput(f"{where}: {tokens} tokens, limit is {limits.max_prompt_tokens} (max_prompt_tokens)",
                           reason="TEXT_TOO_LONG")
    return tokens


def check_generate(call: GenerateCall, limits: SamplerLimits, defaults: SamplingDefaultsSection,
                   rules: PromptRules | None = None) -> CheckedCall:
    """Every check of a Generate call that allocates no bitmap (see the module docstring)."""
    rules = rules or PromptRules()
    if not call.prompts:
        raise InvalidInput("prompts: at least one prompt is required", reason="TOO_FEW")
    check_count("prompts", len(call.prompts), 1, limits.max_prompts, "max_prompts")
    check_count("group_size", call.group_size, MIN_GROUP_SIZE, limits.max_group_size, "max_group_size")
    _unique_ids([p.prompt_id for p in call.prompts])
    if call.expected_policy_version is not None and call.expected_policy_version < 0:
        raise InvalidInput(f"expected_policy_version is {call.expected_policy_version}; versions are >= 0",
                           reason="BAD_VERSION")
    sampling = resolve_sampling(call.sampling, defaults, limits.max_new_tokens)
    tokens = tuple(_check_text(i, p, limits, rules) for i, p in enumerate(call.prompts))
    work = call.group_size * sum(t + sampling.max_new_tokens for t in tokens)
    if work > limits.max_request_tokens:
        raise InvalidInput(
            f"prompts: group_size {call.group_size} x (prompt tokens + max_new_tokens {sampling.max_new_tokens}) over "
            f"{len(tokens)} prompts is {work} tokens, limit is {limits.max_request_tokens} (max_request_tokens); "
            "send fewer or shorter prompts", reason="REQUEST_TOO_LARGE")
    pixels = 0
    for i, p in enumerate(call.prompts):
        if p.image is not None:
            width, height = check_image_header(p.image.data, p.image.mime_type, limits.inputs, f"prompts[{i}].")
            pixels += width * height
    check_request_pixels(pixels, limits.inputs, "prompts")
    return CheckedCall(call, sampling, tokens, pixels, limits)


def decode_prompts(checked: CheckedCall) -> GenerateJob:
    """The job of a checked call, its images decoded (RGB)."""
    call, inputs = checked.call, checked.limits.inputs
    prompts = tuple(
        PromptInput(p.prompt_id, p.text, None if p.image is None else
                    decode_image(p.image.data, p.image.mime_type, f"prompts[{i}].", inputs.max_image_pixels))
        for i, p in enumerate(call.prompts)
    )
    return GenerateJob(prompts, call.group_size, checked.sampling, call.expected_policy_version, call.request_id)


def validate_generate(call: GenerateCall, limits: SamplerLimits, defaults: SamplingDefaultsSection,
                      rules: PromptRules | None = None) -> GenerateJob:
    """Check a Generate call against the limits and resolve its sampling parameters (both steps)."""
    return decode_prompts(check_generate(call, limits, defaults, rules))


def _unique_ids(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, pid in enumerate(ids):
        if pid in seen:
            raise InvalidInput(f"prompts[{i}].prompt_id {shown(pid)} repeats an earlier prompt_id; ids must be unique",
                               reason="DUPLICATE_ID")
        seen.add(pid)


__all__ = [
    "MIN_GROUP_SIZE",
    "MIN_TEMPERATURE",
    "CheckedCall",
    "GenerateCall",
    "GenerateJob",
    "PromptInput",
    "PromptRules",
    "RawImage",
    "RawPrompt",
    "RawSampling",
    "SamplerLimits",
    "SamplingOptions",
    "check_generate",
    "decode_prompts",
    "resolve_sampling",
    "validate_generate",
]
