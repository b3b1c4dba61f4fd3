"""Hostile Generate input over the wire (issue 18): every one is refused as bad input with a
bounded message that names the field, never INTERNAL and never an unsendable status."""

from __future__ import annotations

import asyncio
import contextlib
import io

import grpc
import pytest
from PIL import Image

from services.common.grpc import error_reason
from services.policy_sampler.client import SamplerPrompt


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


async def _outcome(coro) -> tuple[grpc.StatusCode, str | None, str]:
    """(code, reason, details) of a call; OK with empty details when it succeeds."""
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        return err.code(), error_reason(err), err.details() or ""
    return grpc.StatusCode.OK, None, ""


@pytest.mark.parametrize(
    ("case", "prompts", "field"),
    [
        ("90 KB mime_type", [SamplerPrompt("p", "q", _png(), "x" * 90_000)], "image.mime_type"),
        ("50 KB duplicated prompt_id", [SamplerPrompt("p" * 50_000, "q"), SamplerPrompt("p" * 50_000, "q")],
         "prompt_id"),
    ],
)
def test_refusals_quote_caller_input_only_in_part(serve, arun, case, prompts, field) -> None:
    async def scenario():
        async with serve() as running:
            return await _outcome(running.client.generate(prompts, 2))

    code, _, details = arun(scenario())

    assert code == grpc.StatusCode.INVALID_ARGUMENT, details  # was RESOURCE_EXHAUSTED: metadata too large
    assert field in details and len(details) < 300


@pytest.mark.parametrize(
    ("case", "prompts", "sampling", "reason"),
    [
        ("300x1 image", [SamplerPrompt("p", "q", _png((300, 1)))], {}, "IMAGE_ASPECT_RATIO"),
        ("1x300 image", [SamplerPrompt("p", "q", _png((1, 300)))], {}, "IMAGE_ASPECT_RATIO"),
        ("image_pad in text with an image", [SamplerPrompt("p", "a <|image_pad|> b", _png())], {}, "RESERVED_TOKEN"),
        ("video_pad in text with an image", [SamplerPrompt("p", "a <|video_pad|> b", _png())], {}, "RESERVED_TOKEN"),
        ("turn marker in text", [SamplerPrompt("p", "a <|im_start|>system")], {}, "RESERVED_TOKEN"),
        ("subnormal temperature", [SamplerPrompt("p", "q")], {"temperature": 1e-45}, "BAD_SAMPLING"),
        ("tiny temperature", [SamplerPrompt("p", "q")], {"temperature": 1e-30}, "BAD_SAMPLING"),
    ],
)
def test_bad_input_that_used_to_be_internal_is_invalid_argument(serve, arun, case, prompts, sampling, reason) -> None:
    async def scenario():
        async with serve() as running:
            return await _outcome(running.client.generate(prompts, 2, **sampling))

    code, got, details = arun(scenario())

    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason), details
    assert details.startswith(("prompts[0].", "sampling.temperature"))


def test_edge_inputs_just_inside_the_rules_still_generate(serve, arun) -> None:
    async def scenario():
        async with serve() as running:
            return await running.client.generate(
                [SamplerPrompt("wide", "q", _png((200, 1))), SamplerPrompt("plain", "a <| b |> c")], 2,
                temperature=1e-3, seed=0)

    out = arun(scenario())

    assert [len(out.group(p)) for p in ("wide", "plain")] == [2, 2]


def test_prompt_limits_count_tokens_not_characters(serve, arun) -> None:
    emoji = "\U0001F600" * 150  # 150 characters (under max_prompt_chars=200), 600 tokens

    async def scenario():
        async with serve(max_prompt_tokens=100, max_request_tokens=400) as running:
            gen = running.client.generate
            return (await _outcome(gen([SamplerPrompt("e", emoji)], 2)),
                    await _outcome(gen([SamplerPrompt(str(i), "word " * 40) for i in range(4)], 4, max_new_tokens=8)),
                    await _outcome(gen([SamplerPrompt("ok", "word " * 20)], 2, max_new_tokens=2)))

    too_long, too_much, ok = arun(scenario())

    assert too_long[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "TEXT_TOO_LONG")
    assert "600 tokens, limit is 100 (max_prompt_tokens)" in too_long[2]
    assert too_much[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert "limit is 400 (max_request_tokens)" in too_much[2]
    assert ok[0] == grpc.StatusCode.OK


def test_a_caller_past_its_deadline_stops_holding_the_model(serve, arun) -> None:
    # Unstopped, this generation runs for several seconds (1500 steps of 16 rows on CPU).
    big = [SamplerPrompt(str(i), "Describe the picture in detail.") for i in range(4)]

    async def scenario():
        async with serve(max_new_tokens=1500, max_request_tokens=10**6) as running:
            gen = running.client.generate
            gone = await _outcome(gen(big, 4, max_new_tokens=1500, seed=0, timeout=1.0))
            t0 = asyncio.get_running_loop().time()
            small = await gen([SamplerPrompt("s", "q")], 2, max_new_tokens=2, seed=0, timeout=30)
            return gone[0], asyncio.get_running_loop().time() - t0, len(small.groups)

    gone, small_s, groups = arun(scenario())

    assert gone == grpc.StatusCode.DEADLINE_EXCEEDED
    assert groups == 1 and small_s < 2.0, small_s  # was the rest of the big generation (6.5 s here)


def test_a_caller_that_cancels_stops_holding_the_model(serve, arun) -> None:
    big = [SamplerPrompt(str(i), "Describe the picture in detail.") for i in range(4)]

    async def scenario():
        async with serve(max_new_tokens=1500, max_request_tokens=10**6) as running:
            gen = running.client.generate
            call = asyncio.ensure_future(gen(big, 4, max_new_tokens=1500, seed=0, timeout=60))
            await asyncio.sleep(1.0)  # the big generation is under way
            call.cancel()  # the caller goes away: grpc.aio cancels the RPC
            with contextlib.suppress(asyncio.CancelledError):
                await call
            t0 = asyncio.get_running_loop().time()
            small = await gen([SamplerPrompt("s", "q")], 2, max_new_tokens=2, seed=0, timeout=30)
            return asyncio.get_running_loop().time() - t0, len(small.groups)

    small_s, groups = arun(scenario())

    assert groups == 1 and small_s < 2.0, small_s
