"""Hostile UpdateWeights through a real sampler (issue 18, defect 6): an untrusted adapter config is
refused as bad input before anything is built from it, and a stalled upload cannot hold the update
lock forever."""

from __future__ import annotations

import asyncio
import json
import resource
import time

import grpc
import pytest

from services.common.grpc import error_reason
from services.common.weights_codec import encode_lora_adapter
from services.policy_sampler.client import weight_chunks


@pytest.fixture(scope="module")
def adapter(tools) -> tuple[bytes, str]:
    """A rank-2 adapter of the served policy: (payload, adapter_config.json text)."""
    return encode_lora_adapter(tools.lora_policy(rank=2).model)


def _edit(config: str, **changes) -> str:
    return json.dumps({**json.loads(config), **changes})


def _nested(depth: int) -> str:
    return '{"r": 2, "target_modules": ' + "[" * depth + "]" * depth + "}"


CASES = {
    # case: (config edit, code, reason)
    "nested 100k deep": (lambda c: _nested(100_000), grpc.StatusCode.INVALID_ARGUMENT, "BAD_ADAPTER_CONFIG"),
    "nested 20 deep (small)": (lambda c: _nested(20), grpc.StatusCode.INVALID_ARGUMENT, "BAD_ADAPTER_CONFIG"),
    "unclosed regex": (lambda c: _edit(c, target_modules="(unclosed"), grpc.StatusCode.INVALID_ARGUMENT,
                       "BAD_ADAPTER_CONFIG"),
    "bad rank_pattern regex": (lambda c: _edit(c, rank_pattern={"[": 2}), grpc.StatusCode.INVALID_ARGUMENT,
                               "BAD_ADAPTER_CONFIG"),
    "unknown key": (lambda c: _edit(c, lora_rank=2), grpc.StatusCode.INVALID_ARGUMENT, "BAD_ADAPTER_CONFIG"),
    # valid JSON and a valid LoraConfig, only too large: 10k alternatives in target_modules (~200 KB)
    "200 KB config": (lambda c: _edit(c, target_modules=[f"module_{i}" for i in range(10_000)]),
                      grpc.StatusCode.INVALID_ARGUMENT, "BAD_ADAPTER_CONFIG"),
    "r=500000": (lambda c: _edit(c, r=500_000), grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_DO_NOT_FIT"),
    "r=1e9": (lambda c: _edit(c, r=10**9), grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_DO_NOT_FIT"),
    "rank_pattern 500000": (lambda c: _edit(c, rank_pattern={".*q_proj": 500_000}), grpc.StatusCode.FAILED_PRECONDITION,
                            "WEIGHTS_DO_NOT_FIT"),
}


def test_hostile_adapter_configs_are_refused_cheaply_and_the_sampler_keeps_serving(serve, arun, adapter) -> None:
    payload, config = adapter

    async def scenario():
        async with serve() as running:
            out = {}
            # A new version per case: a refused push leaves version 0 serving, an accepted one would
            # turn a later push of the same version and payload into a no-op retry.
            for version, (case, (edit, _, _)) in enumerate(CASES.items(), start=1):
                t0 = time.perf_counter()
                try:
                    await running.client.push_weights(version, payload, "lora", adapter_config_json=edit(config))
                    out[case] = (grpc.StatusCode.OK, None, "", 0.0)
                except grpc.aio.AioRpcError as err:
                    out[case] = (err.code(), error_reason(err), err.details() or "", time.perf_counter() - t0)
            good = await running.client.push_weights(len(CASES) + 1, payload, "lora", adapter_config_json=config)
            return out, good

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes, good = arun(scenario(), timeout=120)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024

    for case, (_, code, reason) in CASES.items():
        got_code, got_reason, details, seconds = outcomes[case]
        assert (got_code, got_reason) == (code, reason), (case, details)
        assert details.startswith(("adapter", "header")) and len(details) < 400, (case, details)
        assert seconds < 1.5, (case, seconds)  # r=500000 took 2.9 s building 250 MB of adapter
    assert "lora_rank" in outcomes["unknown key"][2]
    assert "limit is" in outcomes["200 KB config"][2]  # the size rule, not whatever peft makes of it
    assert "nested deeper than" in outcomes["nested 20 deep (small)"][2]
    assert "rank 500000" in outcomes["r=500000"][2] and "largest LoRA rank is 2" in outcomes["r=500000"][2]
    assert rss_growth_mb < 150, rss_growth_mb
    assert good.applied and good.version == len(CASES) + 1


def test_a_stalled_upload_times_out_and_releases_the_update_lock(serve, arun, adapter) -> None:
    payload, config = adapter

    async def stalled(stop: asyncio.Event):
        stream = weight_chunks(1, payload, "lora", config, chunk_bytes=1024)
        yield next(stream)  # the header
        yield next(stream)  # one chunk of many, then silence
        await stop.wait()

    async def scenario():
        stop = asyncio.Event()
        async with serve(weights_idle_timeout_s=0.5) as running:
            client = running.client
            stuck = asyncio.ensure_future(client.push_stream(stalled(stop), timeout=20))
            await asyncio.sleep(0.2)  # the stalled upload holds the lock now
            t0 = time.perf_counter()
            valid = await client.push_weights(2, payload, "lora", adapter_config_json=config, timeout=5)
            waited = time.perf_counter() - t0
            try:
                await stuck
                stuck_outcome = (grpc.StatusCode.OK, None, "")
            except grpc.aio.AioRpcError as err:
                stuck_outcome = (err.code(), error_reason(err), err.details())
            stop.set()
            return valid, waited, stuck_outcome, (await client.get_info()).policy_version

    valid, waited, (code, reason, details), version = arun(scenario())

    assert valid.applied and version == 2 and waited < 4.0  # was DEADLINE_EXCEEDED after the 5 s timeout
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_STALLED")
    assert "weights_idle_timeout_s=0.5" in details
