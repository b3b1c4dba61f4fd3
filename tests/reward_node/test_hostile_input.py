"""Image bombs against a real node (issue 18, defect 1): pixels are read from the headers and
bounded per image, per call and node-wide before anything is decoded, and decoding never runs on
the event loop (health checks stay prompt while images decode)."""
from __future__ import annotations

import asyncio
import io
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageFile

from services.common.grpc import error_reason
from services.reward_node.client import ScoreGroup
from services.reward_node.validation import GroupInput, decode_groups, group_prefixes

from .conftest import FakeRM, fake_loaded, node_settings


def flat_png(side: int) -> bytes:
    """A side x side one-colour PNG: a few KB on the wire, 3 * side^2 bytes once decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[int, int]]:
    """The sizes of the images whose pixels get decoded (PIL reads a header without load())."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counting_load(self):
        if self.tile:  # pixels still to decode (load() of a loaded image returns at once)
            sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return sizes


async def _code(coro) -> tuple[grpc.StatusCode, str | None, str]:
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        return err.code(), error_reason(err), err.details() or ""
    return grpc.StatusCode.OK, None, ""


def test_a_call_whose_images_add_up_past_the_pixel_limit_is_refused_before_decoding(node, arun, decoded) -> None:
    rm = FakeRM()
    bomb = flat_png(1024)  # ~3 KB each, 1 Mpixel each
    settings = node_settings(limits={"max_request_pixels": 4_000_000})

    async def scenario():
        async with node(settings, fake_loaded(rm)) as running, running.client() as client:
            return await _code(client.score_batch([ScoreGroup("q", ["a"], bomb, group_id=str(i)) for i in range(8)]))

    code, reason, details = arun(scenario())

    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_PIXELS")
    assert "8388608 pixels" in details and "limits.max_request_pixels" in details
    assert rm.served_batches() == []
    assert (1024, 1024) not in decoded  # refused from the headers: no bomb was decoded


def test_an_image_over_the_per_image_pixel_limit_is_refused_from_its_header(node, arun, decoded) -> None:
    settings = node_settings(limits={"max_image_pixels": 500_000})

    async def scenario():
        async with node(settings) as running, running.client() as client:
            return await _code(client.score("q", ["a"], flat_png(1024)))

    code, reason, details = arun(scenario())

    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_DIMENSIONS")
    assert "1024x1024" in details and "limits.max_image_pixels" in details
    assert (1024, 1024) not in decoded


def test_concurrent_calls_are_admitted_by_pixels_before_they_decode(node, arun, decoded) -> None:
    gate = threading.Event()
    rm = FakeRM(gate=gate)
    image = flat_png(1024)
    settings = node_settings(batching={"max_pending_pixels": 1_500_000, "max_wait_ms": 0})

    async def scenario():
        gate.set()
        async with node(settings, fake_loaded(rm)) as running, running.client() as client:
            gate.clear()
            rm.running.clear()
            first = asyncio.ensure_future(client.score("a", ["1"], image))  # holds its pixels while scored
            await asyncio.to_thread(rm.running.wait, 10)
            second = await _code(client.score("b", ["1"], image))
            gate.set()
            return second, (await first).scores

    (code, reason, details), first = arun(scenario())

    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    assert "batching.max_pending_pixels=1500000" in details
    assert first == [1.0]  # the admitted call completes
    assert decoded.count((1024, 1024)) == 1  # only the admitted call's image was decoded


def test_small_image_bombs_decode_off_the_event_loop(node, arun) -> None:
    # Each PNG is under the old 64 KiB inline-decoding threshold but decodes to 12 MB.
    groups = [ScoreGroup("q", ["a"], flat_png(2048), group_id=str(i)) for i in range(6)]
    inputs = [GroupInput(g.prompt, g.responses, g.image, "image/png") for g in groups]
    settings = node_settings(limits={"max_request_pixels": 6 * 2048 * 2048},
                             batching={"max_pending_pixels": 6 * 2048 * 2048})
    t0 = time.perf_counter()
    decode_groups(inputs, settings.limits, group_prefixes(len(inputs), True))
    decode_s = time.perf_counter() - t0

    async def scenario():
        async with node(settings) as running, running.client() as client:
            async with grpc.aio.insecure_channel(running.address) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                call = asyncio.ensure_future(client.score_batch(groups, timeout=30))
                # The longest gap between two health answers (client and node share this loop: a
                # decode on the loop stalls both, whenever it happens).
                worst, last = 0.0, time.perf_counter()
                while not call.done():
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    now = time.perf_counter()
                    worst, last = max(worst, now - last), now
                    await asyncio.sleep(0.002)
                return (await call).groups, worst

    scored, worst_health_s = arun(scenario())

    assert len(scored) == 6
    assert worst_health_s < max(0.5 * decode_s, 0.05), (worst_health_s, decode_s)


def test_a_huge_mime_type_is_quoted_in_part_and_the_status_is_sendable(node, arun) -> None:
    async def scenario():
        async with node() as running, running.client() as client:
            return await _code(client.score("q", ["a"], flat_png(8), mime_type="x" * 90_000))

    code, reason, details = arun(scenario())

    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_MIME_TYPE")  # was RESOURCE_EXHAUSTED
    assert details.startswith("image.mime_type: 'xxx") and len(details) < 300


def test_undecodable_request_bytes_are_invalid_argument(node, arun) -> None:
    async def scenario():
        async with node() as running, grpc.aio.insecure_channel(running.address) as ch:
            raw = ch.unary_unary("/mor.v1.RewardNode/ScoreBatch", request_serializer=None, response_deserializer=None)
            return await _code(raw(b"\x7f\xff\xff\xff", timeout=5))

    code, reason, _ = arun(scenario())

    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")  # was UNKNOWN
