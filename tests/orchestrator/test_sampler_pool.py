"""Two real policy samplers (tiny Qwen2-VL, HF backend, 127.0.0.1) behind one SamplerPool: prompts split
across them in order, one version pushed to all, a replica that missed a push or died is left out and
re-admitted with the latest weights when it answers again. (Both samplers run in this process and
share torch's RNG, so their samples are not compared token for token here.)"""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.common.config import SamplerSettings
from services.common.config.sections import EndpointSection, TLSSection
from services.common.errors import NotReady
from services.orchestrator.prompts import Prompt
from services.orchestrator.sampler_pool import SamplerPool, split_evenly
from services.policy_sampler.app import SamplerApp
from services.policy_sampler.client import SamplerClient

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
POLICY = {"arch": "qwen2_vl", "preset": "tiny", "seed": 0}
PROMPTS = [Prompt(f"p{i}", "shapes", f"How many shapes are there in picture {i}?", None, ()) for i in range(5)]
GEN = {"temperature": 1.0, "max_new_tokens": 4, "seed": 7}


def _app(port: int = 0) -> SamplerApp:
    return SamplerApp(SamplerSettings(
        model=POLICY, tls={"insecure": True}, metrics={"enabled": False},
        server={"host": "127.0.0.1", "port": port, "grace_s": 0.0}, hf={"torch_threads": 1}))


def _endpoint(port: int) -> EndpointSection:
    return EndpointSection(address=f"127.0.0.1:{port}", tls=TLSSection(insecure=True), timeout_s=20)


async def _version(port: int) -> int:
    async with SamplerClient(_endpoint(port), retries=0) as c:
        return (await c.get_info()).policy_version


async def _lora_payload() -> tuple[bytes, str]:
    from peft import LoraConfig, get_peft_model

    from services.common.models.config import ModelConfig
    from services.common.models.factory import build_vlm
    from services.common.weights_codec import encode_lora_adapter

    model = get_peft_model(build_vlm(ModelConfig(**POLICY)).model,
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    return encode_lora_adapter(model, "default")


def test_split_evenly_is_contiguous_and_balanced():
    assert split_evenly(5, 2) == [(0, 2), (2, 5)]
    assert split_evenly(2, 3) == [(0, 1), (1, 2)]  # never an empty chunk
    assert split_evenly(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_pool_splits_pushes_to_all_and_readmits_a_replica(arun):
    a, b = _app(), _app()

    async def scenario():
        await asyncio.gather(a.start(), b.start())
        pool = SamplerPool([_endpoint(a.port), _endpoint(b.port)])
        try:
            assert await pool.start() == 0
            out = await pool.generate(PROMPTS, 2, **GEN)
            split = dict(pool.last_split)
            payload, config_json = await _lora_payload()
            await pool.push(1, "lora", payload, config_json)
            pushed = (await _version(a.port), await _version(b.port))

            port_b = b.port
            await b.stop(0)  # b misses version 2 ...
            await pool.push(2, "lora", payload, config_json)
            without_b = await pool.generate(PROMPTS, 2, **GEN)
            only_a = dict(pool.last_split)

            b2 = _app(port_b)  # ... and comes back fresh, at version 0
            await b2.start()
            try:
                back = await pool.generate(PROMPTS, 2, **GEN)
                rejoined = (dict(pool.last_split), await _version(port_b), back.policy_version)
            finally:
                await b2.stop(0)
            return out, split, pushed, without_b, only_a, rejoined
        finally:
            await pool.close()
            for app in (a, b):
                with contextlib.suppress(Exception):
                    await app.stop(0)

    out, split, pushed, without_b, only_a, rejoined = arun(scenario(), timeout=180)

    assert len(out.groups) == 5 and all(len(g) == 2 for g in out.groups)
    assert split == {f"127.0.0.1:{a.port}": 2, f"127.0.0.1:{b.port}": 3}
    assert pushed == (1, 1)  # one version, pushed to both
    assert len(without_b.groups) == 5 and without_b.policy_version == 2
    assert list(only_a.values()) == [5]  # the replica that missed the push samples nothing
    split_back, b_version, version = rejoined
    assert b_version == 2 and version == 2  # re-pushed the latest weights on re-admission ...
    assert sorted(split_back.values()) == [2, 3]  # ... and shares the prompts again


def test_a_replica_dying_mid_step_hands_its_prompts_to_the_others(arun):
    a, b = _app(), _app()

    async def scenario():
        await asyncio.gather(a.start(), b.start())
        pool = SamplerPool([_endpoint(a.port), _endpoint(b.port)])
        try:
            await pool.start()
            await b.stop(0)  # gone, and the pool does not know yet
            out = await pool.generate(PROMPTS, 2, **GEN)
            split = dict(pool.last_split)
            await a.stop(0)
            with pytest.raises(NotReady, match="no sampler serves version 0"):
                await pool.generate(PROMPTS, 2, **GEN)
            return out, split
        finally:
            await pool.close()
            for app in (a, b):
                with contextlib.suppress(Exception):
                    await app.stop(0)

    out, split = arun(scenario(), timeout=180)

    assert len(out.groups) == 5 and all(len(g) == 2 for g in out.groups)
    assert split == {f"127.0.0.1:{a.port}": 5}


def test_run_config_takes_one_sampler_or_a_list_of_distinct_replicas():
    from pydantic import ValidationError

    from services.common.config import RunConfig

    one = {"address": "s1:50061", "tls": {"insecure": True}}
    two = {"address": "s2:50061", "tls": {"insecure": True}}
    assert [e.address for e in RunConfig(samplers=[one, two]).sampler_endpoints] == ["s1:50061", "s2:50061"]
    assert [e.address for e in RunConfig(sampler=one).sampler_endpoints] == ["s1:50061"]
    with pytest.raises(ValidationError, match="not both"):
        RunConfig(sampler=one, samplers=[two])
    with pytest.raises(ValidationError, match="duplicate address s1:50061"):
        RunConfig(samplers=[one, one])
