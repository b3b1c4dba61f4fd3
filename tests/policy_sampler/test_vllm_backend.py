"""The vllm backend. Pure helpers run everywhere; the engine tests need vllm and a CUDA GPU and are
skipped otherwise (run them with deploy/gpu/run-vllm-tests.sh on a GPU machine).

The engine tests use the `small` preset: its heads are 64 wide, which vLLM's attention kernels
support (the tiny preset's 16-wide heads are not), and bfloat16 as on a real deployment; log-probs
are compared with the hf recomputation at a bfloat16 tolerance.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
import torch

from services.common.config import ConfigError
from services.policy_sampler.backends import vllm_backend
from services.policy_sampler.requests import SamplingOptions

HAVE_GPU_VLLM = vllm_backend.vllm_available() and torch.cuda.is_available()
DTYPE = os.environ.get("MOR_VLLM_TEST_DTYPE", "bfloat16")
TOLERANCE = float(os.environ.get("MOR_VLLM_TEST_TOLERANCE", "0.1" if DTYPE == "bfloat16" else "2e-3"))


def test_sampling_kwargs_give_every_completion_its_own_seed() -> None:
    sampling = SamplingOptions(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=12, seed=100)

    first = vllm_backend.sampling_kwargs(sampling, 4, 0, [5, 6], [2])
    third = vllm_backend.sampling_kwargs(sampling, 4, 2, [5, 6], [2])

    assert (first["n"], first["seed"], third["seed"]) == (4, 100, 108)  # children use seed + i
    assert first["top_k"] == -1 and first["logprobs"] == 0 and first["max_tokens"] == 12
    assert first["allowed_token_ids"] == [5, 6] and first["stop_token_ids"] == [2]


def test_completion_sample_reads_the_sampled_tokens_logprobs() -> None:
    out = SimpleNamespace(
        text="red", token_ids=[7, 2], finish_reason="stop",
        logprobs=[{7: SimpleNamespace(logprob=-0.5), 9: SimpleNamespace(logprob=-1.0)},
                  {2: SimpleNamespace(logprob=-0.25)}],
    )

    sample = vllm_backend.completion_sample(out)

    assert (sample.token_ids, sample.logprobs, sample.finish_reason) == ((7, 2), (-0.5, -0.25), "stop")


@pytest.mark.skipif(vllm_backend.vllm_available(), reason="vllm is installed here")
def test_selecting_vllm_without_the_extra_is_a_config_error(tools) -> None:
    from services.policy_sampler.app import build_backend

    with pytest.raises(ConfigError, match=r"vllm extra"):
        build_backend(tools.settings(backend="vllm"))


# --- on a GPU with vllm ----------------------------------------------------------------------------


def gpu_vllm(test):
    """Marks a test vllm + gpu and skips it without vllm or a CUDA GPU."""
    skip = pytest.mark.skipif(not HAVE_GPU_VLLM, reason="needs vllm (pip install 'mor[vllm]') and a CUDA GPU")
    return pytest.mark.vllm(pytest.mark.gpu(skip(test)))


@pytest.fixture(scope="module")
def gpu_run(tools, red):
    """One engine start for the module: generate, push an adapter, generate, push full weights."""
    from services.common.models import ModelConfig
    from services.policy_sampler.app import SamplerApp
    from services.policy_sampler.client import SamplerClient, SamplerPrompt

    model = ModelConfig(arch="qwen2_vl", preset="small", seed=0, dtype=DTYPE)
    cfg = tools.settings(backend="vllm", model=model, vllm={"gpu_memory_utilization": 0.3, "max_model_len": 1024,
                                                             "max_lora_rank": 16, "enforce_eager": True})
    prompts = [SamplerPrompt("a", "What colour is the shape?", red), SamplerPrompt("b", "Name a colour.")]
    lora = tools.lora_policy(rank=8, targets=r".*language_model.*\.(q_proj|v_proj)", policy=model)
    full = tools.trainer_policy(seed=5, policy=model)

    async def scenario():
        async with SamplerApp(cfg) as app:
            async with SamplerClient(tools.endpoint(app.port), retries=0) as client:
                out = {"v0": await client.generate(prompts, 3, seed=1, max_new_tokens=8)}
                out["v0_again"] = await client.generate(prompts, 3, seed=1, max_new_tokens=8)
                out["push_lora"] = await client.push_peft_model(1, lora.model)
                out["v1"] = await client.generate(prompts, 3, seed=1, max_new_tokens=8)
                out["push_full"] = await client.push_full_model(2, full.model)
                out["v2"] = await client.generate(prompts, 3, seed=1, max_new_tokens=8)
                out["info"] = await client.get_info()
                return out

    out = asyncio.run(asyncio.wait_for(scenario(), 900))
    out["prompts"], out["models"] = prompts, {0: tools.trainer_policy(policy=model), 1: lora, 2: full}
    return out


def _diff(tools, run, key: str, version: int) -> float:
    prompts, result = run["prompts"], run[key]
    g = len(result.groups[0])
    samples = [s for group in result.groups for s in group]
    vlm = run["models"][version].to("cuda")
    recomputed = tools.recompute(vlm, [p.text for p in prompts for _ in range(g)],
                                 [p.image for p in prompts for _ in range(g)], [s.token_ids for s in samples])
    vlm.to("cpu")
    return tools.max_abs_diff([r.float().cpu() for r in recomputed], [s.logprobs for s in samples])


@gpu_vllm
def test_vllm_grouped_generation_is_tagged_and_reproducible(gpu_run) -> None:
    for key in ("v0", "v1", "v2"):
        assert [len(g) for g in gpu_run[key].groups] == [3, 3]
    assert [gpu_run[k].policy_version for k in ("v0", "v1", "v2")] == [0, 1, 2]
    assert gpu_run["v0"].groups == gpu_run["v0_again"].groups
    assert gpu_run["info"].backend == "vllm"


@gpu_vllm
def test_vllm_logprobs_agree_with_the_trainer(gpu_run, tools) -> None:
    assert _diff(tools, gpu_run, "v0", 0) < TOLERANCE


@gpu_vllm
def test_vllm_lora_hot_swap_serves_the_pushed_adapter(gpu_run, tools) -> None:
    assert gpu_run["push_lora"].applied
    assert _diff(tools, gpu_run, "v1", 1) < TOLERANCE


@gpu_vllm
def test_vllm_full_weights_update(gpu_run, tools) -> None:
    assert gpu_run["push_full"].applied
    assert _diff(tools, gpu_run, "v2", 2) < TOLERANCE

