"""Weight updates through a real sampler: applied and tagged, atomic under concurrent Generate,
and every corrupt or mismatched update refused with the right status while the old weights stay."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from safetensors.torch import load, save

from services.common.grpc import error_reason
from services.common.weights_codec import encode_full_weights, encode_lora_adapter
from services.common.wire import policy_sampler_pb2
from services.policy_sampler.client import SamplerPrompt, weight_chunks


def _prompts(red, chart) -> list[SamplerPrompt]:
    return [SamplerPrompt("a", "What colour is the shape?", red), SamplerPrompt("b", "Which bar is the tallest?", chart)]


def _check_matches(tools, vlm, prompts, result, group_size: int) -> float:
    questions = [p.text for p in prompts for _ in range(group_size)]
    images = [p.image for p in prompts for _ in range(group_size)]
    samples = [s for g in result.groups for s in g]
    recomputed = tools.recompute(vlm, questions, images, [s.token_ids for s in samples])
    return tools.max_abs_diff(recomputed, [s.logprobs for s in samples])


def test_lora_update_is_applied_tagged_and_matches_the_trainer(serve, arun, red, chart, tools) -> None:
    policy = tools.lora_policy()
    prompts = _prompts(red, chart)

    async def scenario():
        async with serve() as running:
            pushed = await running.client.push_peft_model(1, policy.model, chunk_bytes=4096)
            result = await running.client.generate(prompts, group_size=2, seed=3)
            info = await running.client.get_info()
            return pushed, result, info

    pushed, result, info = arun(scenario())

    assert pushed.applied and pushed.version == 1 and pushed.bytes_received > 4096  # several chunks
    assert result.policy_version == 1 and info.policy_version == 1
    assert _check_matches(tools, policy, prompts, result, 2) < 1e-4
    assert _check_matches(tools, tools.trainer_policy(), prompts, result, 2) > 1e-3  # not the old weights


def test_retried_push_is_a_noop_and_a_new_layout_replaces_the_adapter(serve, arun, red, chart, tools) -> None:
    first, second = tools.lora_policy(rank=4, seed=1), tools.lora_policy(rank=2, seed=2)
    prompts = _prompts(red, chart)

    async def scenario():
        async with serve() as running:
            await running.client.push_peft_model(1, first.model)
            again = await running.client.push_peft_model(1, first.model)
            replaced = await running.client.push_peft_model(2, second.model)
            result = await running.client.generate(prompts, group_size=2, seed=4)
            return again, replaced, result

    again, replaced, result = arun(scenario())

    assert (again.version, again.applied) == (1, False)
    assert (replaced.version, replaced.applied) == (2, True)
    assert result.policy_version == 2
    assert _check_matches(tools, second, prompts, result, 2) < 1e-4


def test_full_weights_update_replaces_the_policy(serve, arun, red, chart, tools) -> None:
    other = tools.trainer_policy(seed=5)
    prompts = _prompts(red, chart)

    async def scenario():
        async with serve() as running:
            await running.client.push_peft_model(1, tools.lora_policy().model)  # an adapter first: full weights drop it
            pushed = await running.client.push_full_model(2, other.model, chunk_bytes=64 * 1024)
            return pushed, await running.client.generate(prompts, group_size=2, seed=6)

    pushed, result = arun(scenario())

    assert pushed.applied and result.policy_version == 2
    assert _check_matches(tools, other, prompts, result, 2) < 1e-4


def test_concurrent_generate_during_update_sees_one_version_each(serve, arun, red, chart, tools) -> None:
    """Generations started before, during and after an update: each is tagged with the version it
    ran under and its log-probs match that version's weights exactly (no half-updated weights)."""
    policy = tools.lora_policy(scale=1.0)
    versions = {0: tools.trainer_policy(), 1: policy}
    prompts = _prompts(red, chart)

    async def scenario():
        async with serve() as running:
            gen = running.client.generate

            async def many(n: int, seed0: int):
                return await asyncio.gather(*(gen(prompts, 2, seed=seed0 + i, max_new_tokens=8) for i in range(n)))

            before = asyncio.ensure_future(many(3, 0))
            await asyncio.sleep(0.05)  # let the first generations start
            push = asyncio.ensure_future(running.client.push_peft_model(1, policy.model, chunk_bytes=2048))
            during = asyncio.ensure_future(many(3, 10))
            await push
            after = await many(2, 20)
            return [*(await before), *(await during), *after]

    results = arun(scenario())

    seen = {r.policy_version for r in results}
    assert seen == {0, 1}
    for r in results:
        assert _check_matches(tools, versions[r.policy_version], prompts, r, 2) < 1e-4
        other = versions[1 - r.policy_version]
        assert _check_matches(tools, other, prompts, r, 2) > 1e-3


def _adapter(tools, **kwargs) -> tuple[bytes, str]:
    return encode_lora_adapter(tools.lora_policy(**kwargs).model)


def _reshaped(payload: bytes) -> bytes:
    tensors = load(payload)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][:, :-1].contiguous()
    return save(tensors)


def _stream(tools, case: str) -> list:
    """The UpdateWeights messages of one bad update (all for version 1 unless said otherwise)."""
    payload, config = _adapter(tools)
    chunks = list(weight_chunks(1, payload, "lora", config, chunk_bytes=1024))
    header = chunks[0].header
    if case == "bad_sha":
        header.sha256 = "0" * 64
    elif case == "truncated":
        chunks = chunks[:-1]
    elif case == "too_long":
        chunks.append(policy_sampler_pb2.UpdateWeightsRequest(data=b"x"))
    elif case == "flipped_byte":
        data = bytearray(chunks[3].data)
        data[10] ^= 0xFF
        chunks[3] = policy_sampler_pb2.UpdateWeightsRequest(data=bytes(data))
    elif case == "wrong_shapes":
        chunks = list(weight_chunks(1, _reshaped(payload), "lora", config))
    elif case == "wrong_targets":
        data = json.loads(config)
        data["target_modules"] = r".*language_model.*\.(k_proj)"
        chunks = list(weight_chunks(1, payload, "lora", json.dumps(data)))
    elif case == "not_safetensors":
        chunks = list(weight_chunks(1, b"\x00" * 64 + payload, "lora", config))
    elif case == "no_header":
        chunks = chunks[1:]
    elif case == "two_headers":
        chunks.insert(2, chunks[0])
    elif case == "no_kind":
        header.kind = policy_sampler_pb2.WEIGHTS_KIND_UNSPECIFIED
    elif case == "too_large":
        header.total_bytes = 10 * 1024 * 1024
    elif case == "older":
        chunks = list(weight_chunks(0, payload, "lora", config))
    elif case == "full_for_lora":
        chunks = list(weight_chunks(1, payload, "full"))
    else:  # pragma: no cover
        raise ValueError(case)
    return chunks


BAD_UPDATES = [
    ("bad_sha", grpc.StatusCode.DATA_LOSS, "CHECKSUM_MISMATCH"),
    ("flipped_byte", grpc.StatusCode.DATA_LOSS, "CHECKSUM_MISMATCH"),
    ("truncated", grpc.StatusCode.INVALID_ARGUMENT, "WEIGHTS_SIZE_MISMATCH"),
    ("too_long", grpc.StatusCode.INVALID_ARGUMENT, "WEIGHTS_SIZE_MISMATCH"),
    ("wrong_shapes", grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_DO_NOT_FIT"),
    ("wrong_targets", grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_DO_NOT_FIT"),
    ("full_for_lora", grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_DO_NOT_FIT"),
    ("not_safetensors", grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHTS_PAYLOAD"),
    ("no_header", grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHTS_HEADER"),
    ("two_headers", grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHTS_HEADER"),
    ("no_kind", grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHTS_HEADER"),
    ("too_large", grpc.StatusCode.RESOURCE_EXHAUSTED, "WEIGHTS_TOO_LARGE"),
    ("older", grpc.StatusCode.FAILED_PRECONDITION, "STALE_POLICY"),
]


def test_corrupt_or_mismatched_updates_are_refused_and_the_old_weights_stay(serve, arun, red, chart, tools) -> None:
    """One server, every bad update in turn (a server per case would cost the suite ~10 s more)."""
    prompts = _prompts(red, chart)
    serving = tools.lora_policy(seed=9)

    async def scenario():
        async with serve(max_weights_mb=1) as running:
            client = running.client
            await client.push_peft_model(1, serving.model)  # version 1 serves; "older" pushes version 0
            reference = await client.generate(prompts, 2, seed=8)
            outcomes = {}
            for case, _, _ in BAD_UPDATES:
                stream = _stream(tools, case)
                if case != "older":  # push version 2 so only the defect itself is refused
                    for m in stream:
                        if m.WhichOneof("chunk") == "header":
                            m.header.version = 2
                try:
                    await client.push_stream(stream)
                    outcomes[case] = (grpc.StatusCode.OK, None, "")
                except grpc.aio.AioRpcError as err:
                    outcomes[case] = (err.code(), error_reason(err), err.details())
            after = await client.generate(prompts, 2, seed=8)
            conflict = None
            try:
                await client.push_peft_model(1, tools.lora_policy(seed=10).model)  # same version, other bytes
            except grpc.aio.AioRpcError as err:
                conflict = err.code()
            return reference, outcomes, after, (await client.get_info()).policy_version, conflict

    reference, outcomes, after, version, conflict = arun(scenario(), timeout=120)

    for case, code, reason in BAD_UPDATES:
        assert outcomes[case][:2] == (code, reason), (case, outcomes[case])
        assert outcomes[case][2]  # a message the operator can read
    assert version == 1
    assert conflict == grpc.StatusCode.FAILED_PRECONDITION
    assert after.policy_version == 1 and after.groups == reference.groups  # the old weights stayed
    assert _check_matches(tools, serving, prompts, after, 2) < 1e-4


def test_a_refusal_reaches_a_client_that_is_still_writing(serve, arun, tools) -> None:
    """The server refuses at the first message while the client still has many to send: the client
    must see the refusal's code and reason, not INTERNAL (the race of grpc/grpc#36066)."""
    payload, config = _adapter(tools)
    headless = list(weight_chunks(1, payload, "lora", config, chunk_bytes=256))[1:]
    oversized = list(weight_chunks(2, payload, "lora", config, chunk_bytes=256))
    oversized[0].header.total_bytes = 10 * 1024 * 1024

    async def scenario():
        async with serve(max_weights_mb=1) as running:
            seen = []
            for _ in range(20):
                for stream in (headless, oversized):
                    try:
                        await running.client.push_stream(stream)
                        seen.append((grpc.StatusCode.OK, None))
                    except grpc.aio.AioRpcError as err:
                        seen.append((err.code(), error_reason(err)))
            return seen

    seen = arun(scenario(), timeout=120)

    assert len(headless) > 50
    assert seen[0::2] == [(grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHTS_HEADER")] * 20
    assert seen[1::2] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "WEIGHTS_TOO_LARGE")] * 20


def test_non_finite_weights_are_refused(serve, arun, tools) -> None:
    import torch

    model = tools.trainer_policy(seed=3).model
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    payload = encode_full_weights(model)

    async def scenario():
        async with serve() as running:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await running.client.push_weights(1, payload, "full")
            return err.value.code(), error_reason(err.value), (await running.client.get_info()).policy_version

    assert arun(scenario()) == (grpc.StatusCode.INVALID_ARGUMENT, "NON_FINITE_WEIGHTS", 0)
