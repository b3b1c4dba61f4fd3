"""Versioned weight updates on the sampler: receive, verify and validate (the payload format and its
encoders, shared with the trainer, are in services/common/weights_codec.py; the gate that makes the
swap atomic is version_gate.py).

An update is a header (version, kind, size, sha256, adapter config) plus a payload: a safetensors
file holding either a PEFT LoRA adapter (keys as `peft_model.save_pretrained` writes them,
`base_model.model.<module>.lora_A.weight`, ...) or the full parameter set (keys as
`model.named_parameters()` names them). Nothing here touches the serving model:

1. `check_header` and `check_version` refuse a bad or stale header before any byte is read;
2. `receive_payload` reads the data chunks, refusing more or fewer than `total_bytes`, a sha256
   mismatch, and a sender that stalls (server-side timeouts: the upload holds the update lock);
3. `prepare_lora` / `prepare_full` parse the payload and check every key, shape and value
   against the served architecture, so that the swap itself cannot fail half-way. The adapter
   config is untrusted JSON: bounded in size and depth, known LoRA keys only, regexes compiled,
   and its ranks checked against the payload's tensors before anything is built from it (the
   expected shapes come from a weightless meta-device copy, adapter included);
4. the backend applies the prepared weights while holding `VersionGate.writing()` (version_gate.py), which waits
   for running generations to finish and holds new ones back: a request sees the old weights or
   the new ones, never a mix, and learns which version it ran under.

Refusals are domain errors: InvalidInput (malformed), Overloaded (too large), ChecksumMismatch,
StalePolicy (older version), VersionMismatch (same version with other bytes, or weights that do
not fit the served model).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from services.common.errors import (
    ChecksumMismatch,
    InvalidInput,
    Overloaded,
    StalePolicy,
    TimedOut,
    VersionMismatch,
    shown,
)
from services.common.weights_codec import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    FORMAT,
    WeightsHeader,
)

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedConfig

# peft (0.21) asks transformers (5.x) a deprecated question on every get_peft_model/add_adapter;
# the answer is right, the FutureWarning is noise in the sampler's log.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# Fields of a PEFT config that describe where it came from, not what it computes.
_VOLATILE_CONFIG_KEYS = ("base_model_name_or_path", "revision", "peft_version", "inference_mode", "auto_mapping")
_MAX_LISTED = 3
# A PEFT adapter_config.json is about 1 KB, and flat but for a few small lists and dicts.
MAX_ADAPTER_CONFIG_CHARS = 64 * 1024
MAX_ADAPTER_CONFIG_DEPTH = 4
# Config values peft reads as regular expressions (full-match module names).
_REGEX_KEYS = ("target_modules", "exclude_modules", "layers_pattern")
_PATTERN_DICT_KEYS = ("rank_pattern", "alpha_pattern")


@dataclass(frozen=True)
class LoraUpdate:
    """A validated LoRA adapter: its PEFT config, a canonical key of that config (equal keys mean the
    same adapter layout), and its tensors in the served dtype."""

    version: int
    sha256: str
    config: LoraConfig
    config_key: str
    config_json: str
    tensors: dict[str, torch.Tensor]
    payload: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class FullUpdate:
    """A validated full parameter set (names as `named_parameters()`), in the served dtype."""

    version: int
    sha256: str
    tensors: dict[str, torch.Tensor]
    payload: bytes = field(repr=False, default=b"")


PreparedWeights = LoraUpdate | FullUpdate


# --- header and version rules ------------------------------------------------------------------


def check_header(header: WeightsHeader, max_bytes: int) -> None:
    """Refuse a malformed header (InvalidInput) or one announcing more than `max_bytes` (Overloaded)."""
    if header.kind is None:
        raise InvalidInput("header.kind is unspecified; send WEIGHTS_KIND_LORA_ADAPTER or WEIGHTS_KIND_FULL_WEIGHTS",
                           reason="BAD_WEIGHTS_HEADER")
    if (header.format or FORMAT) != FORMAT:
        raise InvalidInput(f"header.format {shown(header.format)} is not supported; only {FORMAT!r}",
                           reason="BAD_WEIGHTS_HEADER")
    if header.version < 0:
        raise InvalidInput(f"header.version is {header.version}; versions are >= 0", reason="BAD_WEIGHTS_HEADER")
    if header.total_bytes <= 0:
        raise InvalidInput(f"header.total_bytes is {header.total_bytes}; it must be > 0", reason="BAD_WEIGHTS_HEADER")
    if not _SHA_RE.match(header.sha256):
        raise InvalidInput("header.sha256 must be 64 lower-case hex digits", reason="BAD_WEIGHTS_HEADER")
    if header.kind == "lora" and not header.adapter_config_json.strip():
        raise InvalidInput("header.adapter_config_json is empty; a LoRA adapter needs its adapter_config.json",
                           reason="BAD_WEIGHTS_HEADER")
    if header.kind == "full" and header.adapter_config_json.strip():
        raise InvalidInput("header.adapter_config_json must be empty for full weights", reason="BAD_WEIGHTS_HEADER")
    if header.total_bytes > max_bytes:
        raise Overloaded(f"header.total_bytes is {header.total_bytes}; the limit is {max_bytes}",
                         reason="WEIGHTS_TOO_LARGE")


def check_version(header: WeightsHeader, serving_version: int, serving_sha256: str) -> bool:
    """True when the update must be applied; False when it is a retried upload of the serving
    version (same sha256): a no-op. Older versions raise StalePolicy, the serving version with
    other bytes raises VersionMismatch (both FAILED_PRECONDITION)."""
    if header.version < serving_version:
        raise StalePolicy(
            f"policy version {header.version} is older than the serving version {serving_version}; versions only grow"
        )
    if header.version == serving_version:
        if header.sha256 == serving_sha256:
            return False
        raise VersionMismatch(
            f"policy version {header.version} is already serving with other weights (sha256 differs); "
            "push a new version", reason="VERSION_CONFLICT",
        )
    return True


async def _timed_chunks(chunks: AsyncIterator[bytes], idle_s: float | None, total_s: float | None) -> AsyncIterator[bytes]:
    """`chunks`, raising TimedOut when the next one takes over `idle_s` or all of them over `total_s`."""
    stream = aiter(chunks)
    deadline = None if total_s is None else time.monotonic() + total_s
    while True:
        waits = [w for w in (idle_s, None if deadline is None else deadline - time.monotonic()) if w is not None]
        wait = min(waits) if waits else None
        try:
            chunk = await asyncio.wait_for(anext(stream), wait) if wait is not None else await anext(stream)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            which = ("weights_receive_timeout_s", total_s) if deadline is not None and time.monotonic() >= deadline \
                else ("weights_idle_timeout_s", idle_s)
            raise TimedOut(f"weight upload stalled: no complete payload within {which[0]}={which[1]:g}; "
                           "the update lock is released, push again", reason="UPLOAD_STALLED") from None
        yield chunk


async def receive_payload(header: WeightsHeader, chunks: AsyncIterator[bytes], *,
                          idle_timeout_s: float | None = None, total_timeout_s: float | None = None) -> bytes:
    """Read every data chunk; refuse more or fewer bytes than header.total_bytes (InvalidInput), a
    payload whose sha256 differs from header.sha256 (ChecksumMismatch), and a sender that leaves
    more than `idle_timeout_s` between chunks or takes over `total_timeout_s` in all (TimedOut)."""
    buf = bytearray()
    digest = hashlib.sha256()
    async for chunk in _timed_chunks(chunks, idle_timeout_s, total_timeout_s):
        if len(buf) + len(chunk) > header.total_bytes:
            raise InvalidInput(
                f"received more than header.total_bytes ({header.total_bytes}) bytes", reason="WEIGHTS_SIZE_MISMATCH"
            )
        buf += chunk
        digest.update(chunk)
    if len(buf) != header.total_bytes:
        raise InvalidInput(
            f"truncated update: received {len(buf)} of {header.total_bytes} bytes", reason="WEIGHTS_SIZE_MISMATCH"
        )
    if digest.hexdigest() != header.sha256:
        raise ChecksumMismatch(
            f"payload sha256 {digest.hexdigest()} differs from header.sha256 {header.sha256}; the update was corrupted"
        )
    return bytes(buf)


# --- payload parsing and validation ------------------------------------------------------------


def parse_safetensors(payload: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors payload (InvalidInput when it is not one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"payload is not a valid safetensors file ({shown(str(exc), 200)})", reason="BAD_WEIGHTS_PAYLOAD") from None
    if not tensors:
        raise InvalidInput("payload holds no tensors", reason="BAD_WEIGHTS_PAYLOAD")
    return tensors


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _check_values(tensors: Mapping[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise InvalidInput(f"tensor {name} has dtype {t.dtype}; weights must be floating point",
                               reason="BAD_WEIGHTS_PAYLOAD")
        if not bool(torch.isfinite(t).all()):
            raise InvalidInput(f"tensor {name} holds NaN or infinite values", reason="NON_FINITE_WEIGHTS")


def _check_shapes(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    missing = set(expected) - set(tensors)
    unknown = set(tensors) - set(expected)
    if unknown:
        raise VersionMismatch(f"{what}: {len(unknown)} tensor(s) the served model does not have: {_listing(unknown)}",
                              reason="WEIGHTS_DO_NOT_FIT")
    if missing:
        raise VersionMismatch(f"{what}: {len(missing)} tensor(s) missing: {_listing(missing)}",
                              reason="WEIGHTS_DO_NOT_FIT")
    wrong = [f"{n} {tuple(t.shape)} != {expected[n]}" for n, t in tensors.items() if tuple(t.shape) != expected[n]]
    if wrong:
        raise VersionMismatch(f"{what}: {len(wrong)} tensor(s) of the wrong shape: {'; '.join(sorted(wrong)[:_MAX_LISTED])}",
                              reason="WEIGHTS_DO_NOT_FIT")


def _bad_config(message: str) -> InvalidInput:
    return InvalidInput(f"adapter_config_json: {message}", reason="BAD_ADAPTER_CONFIG")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, d + 1) for c in children)
    return deepest


def _check_regexes(data: Mapping[str, Any]) -> None:
    """Every value peft will use as a regular expression must compile (else re.error in peft)."""
    patterns = [(k, data[k]) for k in _REGEX_KEYS if isinstance(data.get(k), str)]
    for key in _PATTERN_DICT_KEYS:
        if isinstance(data.get(key), dict):
            patterns += [(f"{key} key", p) for p in data[key]]
    for key, pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise _bad_config(f"{key} {shown(pattern)} is not a valid regular expression ({shown(str(exc), 80)})") from None


def parse_lora_config(config_json: str) -> tuple[LoraConfig, str]:
    """(LoraConfig, canonical key) from adapter_config.json text; InvalidInput when it is not a LoRA config."""
    from peft import LoraConfig, PeftConfig

    if len(config_json) > MAX_ADAPTER_CONFIG_CHARS:
        raise _bad_config(f"{len(config_json)} characters, limit is {MAX_ADAPTER_CONFIG_CHARS}")
    try:
        data = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"adapter_config_json is not JSON ({exc.msg})", reason="BAD_ADAPTER_CONFIG") from None
    except RecursionError:  # arrays nested thousands deep
        raise _bad_config(f"nested deeper than {MAX_ADAPTER_CONFIG_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise InvalidInput("adapter_config_json must be a JSON object", reason="BAD_ADAPTER_CONFIG")
    if _depth(data) > MAX_ADAPTER_CONFIG_DEPTH:
        raise _bad_config(f"nested deeper than {MAX_ADAPTER_CONFIG_DEPTH} levels")
    # peft drops keys it does not know with a warning; a sender's typo would then change the adapter silently.
    unknown = set(data) - {f.name for f in dataclasses.fields(LoraConfig)}
    if unknown:
        raise _bad_config(f"{len(unknown)} key(s) LoraConfig does not have: {_listing(shown(k, 40) for k in unknown)}")
    _check_regexes(data)
    if data.get("peft_type", "LORA") != "LORA":
        raise InvalidInput(f"adapter peft_type {shown(data.get('peft_type'))} is not supported; only LORA",
                           reason="BAD_ADAPTER_CONFIG")
    data = {**data, "peft_type": "LORA"}
    try:
        config = PeftConfig.from_peft_type(**data)
    except (TypeError, ValueError, KeyError, AttributeError, re.error) as exc:
        raise InvalidInput(f"adapter_config_json is not a valid LoRA config ({shown(str(exc), 200)})", reason="BAD_ADAPTER_CONFIG") from None
    if not isinstance(config, LoraConfig):
        raise InvalidInput("adapter_config_json is not a LoRA config", reason="BAD_ADAPTER_CONFIG")
    config.inference_mode = True
    return config, canonical_config_key(config)


def canonical_config_key(config: LoraConfig) -> str:
    """A string equal for two configs that build the same adapter layout."""
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(data, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v))


@functools.lru_cache(maxsize=8)
def _expected_lora_shapes(
    config_cls: type, model_config_json: str, config_json: str
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Adapter key -> shape for (served architecture, LoRA config), from a weightless (meta device)
    copy of the architecture: exactly what peft builds, without touching the serving model."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForImageTextToText

    config, _ = parse_lora_config(config_json)
    model_config = config_cls.from_dict(json.loads(model_config_json))
    try:
        with torch.device("meta"):  # the adapter too: its matrices take no memory, whatever the rank
            skeleton = AutoModelForImageTextToText.from_config(model_config)
            peft_model = get_peft_model(skeleton, config)
    except (ValueError, TypeError, KeyError, RuntimeError, re.error) as exc:
        raise VersionMismatch(f"adapter config does not fit the served model ({shown(str(exc), 200)})", reason="WEIGHTS_DO_NOT_FIT") from None
    state = get_peft_model_state_dict(peft_model)
    return tuple(sorted((k, tuple(v.shape)) for k, v in state.items()))


def expected_lora_shapes(model_config: PreTrainedConfig, config_json: str) -> dict[str, tuple[int, ...]]:
    """Adapter key -> shape that `config_json` produces on the architecture `model_config` describes."""
    parse_lora_config(config_json)  # refuse a bad config before building anything
    return dict(_expected_lora_shapes(type(model_config), model_config.to_json_string(use_diff=False), config_json))


def prepare_lora(
    header: WeightsHeader,
    payload: bytes,
    model_config: PreTrainedConfig,
    dtype: torch.dtype,
    *,
    max_rank: int | None = None,
) -> LoraUpdate:
    """Parse and check a LoRA adapter update against the served architecture."""
    config, key = parse_lora_config(header.adapter_config_json)
    ranks = [config.r, *(config.rank_pattern or {}).values()]
    if not all(isinstance(r, int) and r >= 1 for r in ranks):
        raise _bad_config("r and rank_pattern values must be integers >= 1")
    if max_rank is not None and max(ranks) > max_rank:
        raise VersionMismatch(f"adapter rank {max(ranks)} exceeds the sampler's max_lora_rank {max_rank}",
                              reason="WEIGHTS_DO_NOT_FIT")
    tensors = parse_safetensors(payload)
    _check_values(tensors)
    _check_ranks_against_payload(ranks, tensors)
    _check_shapes(tensors, expected_lora_shapes(model_config, header.adapter_config_json), "adapter")
    cast = {k: v.to(dtype) for k, v in tensors.items()}
    return LoraUpdate(header.version, header.sha256, config, key, header.adapter_config_json, cast, payload)


def _check_ranks_against_payload(ranks: list[int], tensors: Mapping[str, torch.Tensor]) -> None:
    """The config's ranks must be ranks the payload's lora_A matrices ([rank, in]) really have:
    refused before any adapter is built from the config (an 8 KB push claiming r=500000 cost
    250 MB and 3 s before this check)."""
    sent = {int(t.shape[0]) for k, t in tensors.items() if "lora_A" in k and t.dim() >= 1}
    if not sent:
        raise VersionMismatch("adapter: the payload holds no lora_A tensor", reason="WEIGHTS_DO_NOT_FIT")
    claimed = set(ranks)
    if max(claimed) > max(sent):
        raise VersionMismatch(f"adapter config says rank {max(claimed)}, but the payload's largest LoRA rank is "
                              f"{max(sent)}", reason="WEIGHTS_DO_NOT_FIT")


def parameter_aliases(model: torch.nn.Module) -> dict[str, list[str]]:
    """Canonical parameter name -> every name of that tensor (tied weights have several)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {names[0]: names for names in by_id.values()}


def prepare_full(header: WeightsHeader, payload: bytes, model: torch.nn.Module, dtype: torch.dtype) -> FullUpdate:
    """Parse and check a full-weights update: every parameter of `model` (any one name of a tied
    tensor), no unknown name, same shapes. The result is keyed by canonical parameter names."""
    tensors = parse_safetensors(payload)
    _check_values(tensors)
    aliases = parameter_aliases(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    canonical_of = {alias: canon for canon, names in aliases.items() for alias in names}
    unknown = set(tensors) - set(canonical_of)
    if unknown:
        raise VersionMismatch(f"weights: {len(unknown)} tensor(s) the served model does not have: {_listing(unknown)}",
                              reason="WEIGHTS_DO_NOT_FIT")
    chosen: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        chosen.setdefault(canonical_of[name], t)
    expected = {canon: tuple(params[canon].shape) for canon in aliases}
    _check_shapes(chosen, expected, "weights")
    cast = {k: v.to(dtype) for k, v in chosen.items()}
    return FullUpdate(header.version, header.sha256, cast, payload)


# --- the swap gate -------------------------------------------------------------------------------


def write_adapter_dir(update: LoraUpdate, folder: str | Path) -> Path:
    """Write a validated adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG_FILE).write_text(update.config_json)
    (out / ADAPTER_WEIGHTS_FILE).write_bytes(update.payload)
    return out


__all__ = [
    "FullUpdate",
    "LoraUpdate",
    "PreparedWeights",
    "canonical_config_key",
    "check_header",
    "check_version",
    "expected_lora_shapes",
    "parameter_aliases",
    "parse_lora_config",
    "parse_safetensors",
    "prepare_full",
    "prepare_lora",
    "receive_payload",
    "write_adapter_dir",
]
