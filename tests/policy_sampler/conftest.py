"""Fixtures of the policy-sampler tests: a real sampler on 127.0.0.1:0 with a tiny policy, the
trainer-side models to recompute log-probs with, adapters to push, and small images.

pytest-asyncio is not used: each test runs its scenario with `arun(coro)`, bounded by a timeout.
Each scenario gets a fresh backend (a tiny model builds in about 0.1 s), so weight pushes never
leak between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image

from services.common.config import EndpointSection, SamplerSettings, TLSSection
from services.common.models import ModelConfig, build_vlm
from services.common.models.vlm import VLM
from services.policy_sampler.app import SamplerApp
from services.policy_sampler.backends.hf import HFBackend
from services.policy_sampler.client import SamplerClient

SCENARIO_TIMEOUT_S = 60.0
POLICY = ModelConfig(arch="qwen2_vl", preset="tiny", seed=0)
LORA_TARGETS = r".*language_model.*\.(q_proj|v_proj|o_proj|gate_proj|down_proj)"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def arun() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def run(coro: Coroutine[Any, Any, Any], timeout: float = SCENARIO_TIMEOUT_S) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


def settings(**overrides: Any) -> SamplerSettings:
    """Sampler settings for tests: tiny policy, plaintext loopback, no metrics port, small limits."""
    base: dict[str, Any] = {
        "model": POLICY,
        "tls": {"insecure": True},
        "metrics": {"enabled": False},
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
        "max_prompts": 4,
        "max_group_size": 4,
        "max_new_tokens": 8,
        "sampling": {"max_new_tokens": 6},
        "limits": {"max_prompt_chars": 200, "max_image_bytes": 64 * 1024},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return SamplerSettings(**base)


@dataclass
class Running:
    app: SamplerApp
    client: SamplerClient
    backend: HFBackend

    def endpoint(self, **kwargs: Any) -> EndpointSection:
        kwargs.setdefault("tls", TLSSection(insecure=True))
        return EndpointSection(address=f"127.0.0.1:{self.app.port}", timeout_s=30.0, **kwargs)


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """`async with serve(**setting_overrides) as running:` a started sampler and a client to it."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Running]:
        cfg = settings(**overrides)
        backend = HFBackend(cfg.model, cfg.hf)
        app = SamplerApp(cfg, backend)
        await app.start()
        client = SamplerClient(EndpointSection(address=f"127.0.0.1:{app.port}", tls=TLSSection(insecure=True),
                                               timeout_s=30.0), retries=0)
        try:
            yield Running(app, client, backend)
        finally:
            await client.close()
            await app.stop(0)

    return run


def trainer_policy(seed: int = 0, policy: ModelConfig = POLICY) -> VLM:
    """The trainer's copy of the initial policy (same config, so bit-identical weights); another
    seed gives another policy of the same architecture."""
    vlm = build_vlm(policy if seed == 0 else policy.model_copy(update={"seed": seed}))
    return vlm.eval()


def lora_policy(rank: int = 4, scale: float = 0.5, seed: int = 1, targets: str = LORA_TARGETS,
                policy: ModelConfig = POLICY) -> VLM:
    """A trainer policy with a LoRA adapter whose B matrices are random (a "trained" adapter)."""
    from peft import LoraConfig, get_peft_model

    base = trainer_policy(policy=policy)
    peft_model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return VLM(peft_model, base.tokenizer, base.image_processor).eval()


def recompute(vlm: VLM, questions: list[str], images: list[Image.Image | None], token_ids: list[tuple[int, ...]],
              temperature: float = 1.0) -> list[torch.Tensor]:
    """The trainer's log-probs of the given completions (teacher-forced, no grad)."""
    with torch.no_grad():
        return vlm.sequence_logprobs(questions, images, [list(t) for t in token_ids], temperature=temperature)


def max_abs_diff(recomputed: list[torch.Tensor], sampled: list[tuple[float, ...]]) -> float:
    return max((r - torch.tensor(s)).abs().max().item() for r, s in zip(recomputed, sampled, strict=True))


def endpoint(port: int, **kwargs: Any) -> EndpointSection:
    """A plaintext loopback endpoint of a sampler on `port`."""
    kwargs.setdefault("tls", TLSSection(insecure=True))
    return EndpointSection(address=f"127.0.0.1:{port}", timeout_s=60.0, **kwargs)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Tools:
    """Helpers the tests reach through the `tools` fixture (test modules do not import conftest)."""

    POLICY = POLICY
    LORA_TARGETS = LORA_TARGETS
    settings = staticmethod(settings)
    trainer_policy = staticmethod(trainer_policy)
    lora_policy = staticmethod(lora_policy)
    recompute = staticmethod(recompute)
    max_abs_diff = staticmethod(max_abs_diff)
    png = staticmethod(png)
    endpoint = staticmethod(endpoint)


@pytest.fixture(scope="session")
def tools() -> type[Tools]:
    return Tools


@pytest.fixture(scope="session")
def red() -> Image.Image:
    return Image.new("RGB", (64, 64), (220, 30, 30))


@pytest.fixture(scope="session")
def chart() -> Image.Image:
    img = Image.new("RGB", (80, 48), (250, 250, 250))
    for x in range(10, 70, 20):
        for y in range(10, 48):
            img.putpixel((x, y), (30, 60, 200))
    return img
