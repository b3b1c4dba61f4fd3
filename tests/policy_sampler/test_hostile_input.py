"""Hostile Generate input over the wire (issue 18): every one is refused as bad input with a
bounded message that names the field, never INTERNAL and never an unsendable status."""

from __future__ import annotations

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
