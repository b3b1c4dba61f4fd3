"""The PolicySampler gRPC servicer: a thin protobuf adapter over `Sampler`.

It only converts messages to plain values and back; every rule lives in the domain modules, and
domain errors become status codes in the shared exception interceptor. This is the one module of
the service that imports the generated `*_pb2` messages (with `client.py` on the caller side).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.common import errors
from services.common.config.variants import SAMPLER_BACKENDS
from services.common.grpc import current_request_id
from services.common.wire import common_pb2, policy_sampler_pb2, policy_sampler_pb2_grpc
from services.policy_sampler.requests import GenerateCall, RawImage, RawPrompt, RawSampling
from services.policy_sampler.sampler import GenerationResult, Sampler, SamplerInfo
from services.policy_sampler.weights import WeightsHeader

# What a refused update may still send after the refusal before we stop reading it (see UpdateWeights).
_DRAIN_SLACK_BYTES = 4 * 1024 * 1024

_KINDS = {
    policy_sampler_pb2.WEIGHTS_KIND_LORA_ADAPTER: "lora",
    policy_sampler_pb2.WEIGHTS_KIND_FULL_WEIGHTS: "full",
}
_FINISH = {"stop": policy_sampler_pb2.FINISH_REASON_STOP, "length": policy_sampler_pb2.FINISH_REASON_LENGTH}
# The enum value of each backend of config.variants.SAMPLER_BACKENDS is SAMPLER_BACKEND_<NAME>.
_BACKENDS = {name: policy_sampler_pb2.SamplerBackend.Value(f"SAMPLER_BACKEND_{name.upper()}") for name in SAMPLER_BACKENDS}
_STATES = {
    "loading": common_pb2.SERVING_STATE_LOADING,
    "serving": common_pb2.SERVING_STATE_SERVING,
    "draining": common_pb2.SERVING_STATE_DRAINING,
}


def generate_call(request: Any) -> GenerateCall:
    """GenerateRequest -> GenerateCall (plain values; nothing validated yet)."""
    prompts = tuple(
        RawPrompt(
            prompt_id=p.prompt_id,
            text=p.text,
            image=RawImage(bytes(p.image.data), p.image.mime_type) if p.HasField("image") else None,
        )
        for p in request.prompts
    )
    s = request.sampling
    sampling = RawSampling(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed if s.HasField("seed") else None,
    )
    expected = request.expected_policy_version if request.HasField("expected_policy_version") else None
    return GenerateCall(prompts, request.group_size, sampling, expected, request.request_id or current_request_id())


def generate_response(result: GenerationResult) -> Any:
    """GenerationResult -> GenerateResponse."""
    groups = [
        policy_sampler_pb2.CompletionGroup(
            prompt_id=pid,
            completions=[
                policy_sampler_pb2.Completion(
                    text=s.text, token_ids=s.token_ids, logprobs=s.logprobs, finish_reason=_FINISH[s.finish_reason]
                )
                for s in group
            ],
        )
        for pid, group in zip(result.prompt_ids, result.groups, strict=True)
    ]
    return policy_sampler_pb2.GenerateResponse(
        groups=groups, policy_version=result.policy_version, request_id=result.request_id
    )


def weights_header(header: Any) -> WeightsHeader:
    """WeightsHeader message -> WeightsHeader (an unknown kind becomes None and is refused later)."""
    return WeightsHeader(
        version=header.version,
        kind=_KINDS.get(header.kind),  # type: ignore[arg-type]
        total_bytes=header.total_bytes,
        sha256=header.sha256,
        format=header.format,
        adapter_config_json=header.adapter_config_json,
    )


def info_message(info: SamplerInfo) -> Any:
    """SamplerInfo -> SamplerInfo message."""
    limits = info.limits
    return policy_sampler_pb2.SamplerInfo(
        model_name=info.model.name,
        model_arch=info.model.arch,
        backend=_BACKENDS[info.backend],
        policy_version=info.policy_version,
        limits=policy_sampler_pb2.SamplerLimits(
            max_prompts=limits.max_prompts,
            max_group_size=limits.max_group_size,
            max_new_tokens=limits.max_new_tokens,
            max_prompt_chars=limits.inputs.max_prompt_chars,
            image=common_pb2.ImageLimits(
                max_image_bytes=limits.inputs.max_image_bytes,
                allowed_mime_types=list(limits.inputs.image_mime_types),
            ),
            max_weights_bytes=info.max_weights_bytes,
        ),
        serving_state=_STATES[info.state],
    )


class PolicySamplerServicer(policy_sampler_pb2_grpc.PolicySamplerServicer):
    """mor.v1.PolicySampler over a `Sampler`."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    async def Generate(self, request: Any, context: Any) -> Any:
        return generate_response(await self._sampler.generate(generate_call(request)))

    async def UpdateWeights(self, request_iterator: Any, context: Any) -> Any:
        stream = aiter(request_iterator)
        try:
            result = await self._update_weights(stream)
        except errors.MorError:
            # A refusal sent while the client is still writing reaches an asyncio client as INTERNAL
            # "Internal error from Core" whenever its next write loses the race with our status
            # (grpc/grpc#36066). Reading what is left first lets the client half-close and see our
            # code and reason; the read is bounded, so a hostile stream cannot hold us longer.
            await _discard(stream, self._sampler.info().max_weights_bytes + _DRAIN_SLACK_BYTES)
            raise
        return policy_sampler_pb2.UpdateWeightsResponse(
            version=result.version, applied=result.applied, bytes_received=result.bytes_received
        )

    async def _update_weights(self, stream: AsyncIterator[Any]) -> Any:
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise errors.InvalidInput("empty UpdateWeights stream; send a header first",
                                      reason="BAD_WEIGHTS_HEADER") from None
        if first.WhichOneof("chunk") != "header":
            raise errors.InvalidInput("the first UpdateWeights message must carry the header",
                                      reason="BAD_WEIGHTS_HEADER")

        async def data() -> AsyncIterator[bytes]:
            async for chunk in stream:
                if chunk.WhichOneof("chunk") == "header":
                    raise errors.InvalidInput("header repeated: only the first message carries one",
                                              reason="BAD_WEIGHTS_HEADER")
                yield chunk.data

        return await self._sampler.update_weights(weights_header(first.header), data())

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return policy_sampler_pb2.PolicySamplerGetInfoResponse(info=info_message(self._sampler.info()))


async def _discard(stream: AsyncIterator[Any], max_bytes: int) -> None:
    """Read and drop what is left of a stream, up to about `max_bytes`."""
    seen = 0
    try:
        async for message in stream:
            seen += message.ByteSize()
            if seen > max_bytes:
                return
    except Exception:  # noqa: BLE001 - the stream's own failure does not replace the refusal
        return


__all__ = ["PolicySamplerServicer", "generate_call", "generate_response", "info_message", "weights_header"]
