"""A typed client of the policy sampler, for the orchestrator, tests and benchmarks.

    async with SamplerClient(EndpointSection(address="127.0.0.1:50061", tls=...)) as sampler:
        result = await sampler.generate([SamplerPrompt("p0", "What colour?", image)], group_size=4, seed=0)
        await sampler.push_peft_model(version=1, peft_model=policy.model)

Generate and GetInfo are retried on UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED with
back-off (see call_with_retry). Weight pushes are a client stream and are not retried here; a
retried push of the same version and bytes is a no-op on the server, so the caller may resend.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from PIL import Image

from services.common.completions import Completion
from services.common.config import EndpointSection
from services.common.config.variants import SAMPLER_BACKENDS
from services.common.grpc import call_with_retry, create_channel
from services.common.grpc.client import DEFAULT_MAX_MESSAGE_BYTES
from services.common.weights_codec import (
    WeightsKind,
    encode_full_weights,
    encode_lora_adapter,
    sha256_hex,
)
from services.common.wire import common_pb2, policy_sampler_pb2, policy_sampler_pb2_grpc

DEFAULT_CHUNK_BYTES = 1024 * 1024
_FINISH = {policy_sampler_pb2.FINISH_REASON_STOP: "stop", policy_sampler_pb2.FINISH_REASON_LENGTH: "length"}
_KINDS = {"lora": policy_sampler_pb2.WEIGHTS_KIND_LORA_ADAPTER, "full": policy_sampler_pb2.WEIGHTS_KIND_FULL_WEIGHTS}
_BACKENDS = {policy_sampler_pb2.SamplerBackend.Value(f"SAMPLER_BACKEND_{name.upper()}"): name for name in SAMPLER_BACKENDS}
_STATES = {
    common_pb2.SERVING_STATE_LOADING: "loading",
    common_pb2.SERVING_STATE_SERVING: "serving",
    common_pb2.SERVING_STATE_DRAINING: "draining",
}


@dataclass(frozen=True)
class SamplerPrompt:
    """A prompt to send: text and an optional image (a PIL image, sent as PNG, or encoded bytes
    with their mime type)."""

    prompt_id: str
    text: str
    image: Image.Image | bytes | None = None
    mime_type: str = "image/png"

    def message(self) -> Any:
        image = None
        if isinstance(self.image, Image.Image):
            buf = io.BytesIO()
            self.image.save(buf, format="PNG")
            image = common_pb2.Image(data=buf.getvalue(), mime_type="image/png")
        elif self.image is not None:
            image = common_pb2.Image(data=bytes(self.image), mime_type=self.mime_type)
        return policy_sampler_pb2.Prompt(prompt_id=self.prompt_id, text=self.text, image=image)


@dataclass(frozen=True)
class Generated:
    """A Generate answer: groups in request order, keyed by prompt id too."""

    prompt_ids: tuple[str, ...]
    groups: tuple[tuple[Completion, ...], ...]
    policy_version: int
    request_id: str

    def group(self, prompt_id: str) -> tuple[Completion, ...]:
        return self.groups[self.prompt_ids.index(prompt_id)]


@dataclass(frozen=True)
class PushResult:
    """The sampler's answer to a weight push."""

    version: int
    applied: bool
    bytes_received: int


@dataclass(frozen=True)
class RemoteSamplerInfo:
    """GetInfo, in plain values."""

    model_name: str
    model_arch: str
    backend: str
    policy_version: int
    serving_state: str
    max_prompts: int
    max_group_size: int
    max_new_tokens: int
    max_weights_bytes: int


def to_generated(response: Any) -> Generated:
    groups = tuple(
        tuple(
            Completion(c.text, tuple(c.token_ids), tuple(c.logprobs), _FINISH.get(c.finish_reason, "length"))  # type: ignore[arg-type]
            for c in g.completions
        )
        for g in response.groups
    )
    return Generated(tuple(g.prompt_id for g in response.groups), groups, response.policy_version, response.request_id)


def weight_chunks(
    version: int, payload: bytes, kind: WeightsKind, adapter_config_json: str = "", chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Any]:
    """The UpdateWeights stream for a payload: the header, then data chunks of `chunk_bytes` (lazily,
    so a large payload is not copied twice)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be > 0")
    header = policy_sampler_pb2.WeightsHeader(
        version=version, kind=_KINDS[kind], total_bytes=len(payload), sha256=sha256_hex(payload),
        format="safetensors", adapter_config_json=adapter_config_json,
    )
    view = memoryview(payload)
    yield policy_sampler_pb2.UpdateWeightsRequest(header=header)
    for i in range(0, len(payload), chunk_bytes):
        yield policy_sampler_pb2.UpdateWeightsRequest(data=bytes(view[i : i + chunk_bytes]))


class SamplerClient:
    """Async client of one policy sampler. Close it (or use `async with`)."""

    def __init__(
        self,
        endpoint: EndpointSection,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        server_name: str | None = None,
        retries: int = 2,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self._channel = create_channel(endpoint, max_message_bytes=max_message_bytes, server_name=server_name)
        self._stub = policy_sampler_pb2_grpc.PolicySamplerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> SamplerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def generate(
        self,
        prompts: Sequence[SamplerPrompt],
        group_size: int,
        *,
        temperature: float | None = None,
        top_p: float = 0.0,
        top_k: int = 0,
        max_new_tokens: int = 0,
        seed: int | None = None,
        expected_policy_version: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Generated:
        """Sample `group_size` completions per prompt. Unset sampling values take the sampler's defaults."""
        request = policy_sampler_pb2.GenerateRequest(
            request_id=request_id,
            prompts=[p.message() for p in prompts],
            group_size=group_size,
            sampling=common_pb2.SamplingParams(
                temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed
            ),
            expected_policy_version=expected_policy_version,
        )
        response = await call_with_retry(
            self._stub.Generate, request, timeout=timeout or self.endpoint.timeout_s, retries=self.retries
        )
        return to_generated(response)

    async def get_info(self, *, timeout: float | None = None) -> RemoteSamplerInfo:
        response = await call_with_retry(
            self._stub.GetInfo, policy_sampler_pb2.PolicySamplerGetInfoRequest(),
            timeout=timeout or self.endpoint.timeout_s, retries=self.retries,
        )
        info = response.info
        return RemoteSamplerInfo(
            model_name=info.model_name, model_arch=info.model_arch, backend=_BACKENDS.get(info.backend, "unspecified"),
            policy_version=info.policy_version, serving_state=_STATES.get(info.serving_state, "unspecified"),
            max_prompts=info.limits.max_prompts, max_group_size=info.limits.max_group_size,
            max_new_tokens=info.limits.max_new_tokens, max_weights_bytes=info.limits.max_weights_bytes,
        )

    async def push_stream(self, messages: Iterable[Any] | AsyncIterator[Any], *, timeout: float | None = None) -> PushResult:
        """Send a prepared UpdateWeights stream (see `weight_chunks`) as is."""
        response = await self._stub.UpdateWeights(_aiter(messages), timeout=timeout or self.endpoint.timeout_s)
        return PushResult(response.version, response.applied, response.bytes_received)

    async def push_weights(
        self,
        version: int,
        payload: bytes,
        kind: WeightsKind,
        *,
        adapter_config_json: str = "",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> PushResult:
        """Push a safetensors payload (a LoRA adapter with its adapter_config.json, or full weights)."""
        return await self.push_stream(weight_chunks(version, payload, kind, adapter_config_json, chunk_bytes),
                                      timeout=timeout)

    async def push_peft_model(self, version: int, peft_model: Any, adapter_name: str = "default", **kwargs: Any) -> PushResult:
        """Push the adapter of an in-memory peft model (the GRPO trainer's policy)."""
        payload, config_json = encode_lora_adapter(peft_model, adapter_name)
        return await self.push_weights(version, payload, "lora", adapter_config_json=config_json, **kwargs)

    async def push_full_model(self, version: int, model: Any, **kwargs: Any) -> PushResult:
        """Push every parameter of an in-memory model (full fine-tuning)."""
        return await self.push_weights(version, encode_full_weights(model), "full", **kwargs)


async def _aiter(messages: Iterable[Any] | AsyncIterator[Any]) -> AsyncIterator[Any]:
    if hasattr(messages, "__aiter__"):
        async for m in messages:  # type: ignore[union-attr]
            yield m
    else:
        for m in messages:  # type: ignore[union-attr]
            yield m


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "Generated",
    "PushResult",
    "RemoteSamplerInfo",
    "SamplerClient",
    "SamplerPrompt",
    "to_generated",
    "weight_chunks",
]
