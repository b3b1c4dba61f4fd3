"""Fixtures of the cross-service tests: a small world, three clients' real light RMs (trained here
on their own pairs), and a runner that starts the real services on 127.0.0.1:0 in process:
three reward nodes and the policy sampler (tiny Qwen2-VL), for `MoRRun` to call over gRPC."""
from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.common.config import NodeEndpoint, RewardNodeSettings, RunConfig, SamplerSettings  # noqa: E402
from services.common.data import WorldConfig, make_world  # noqa: E402
from services.common.data.world import load_world  # noqa: E402
from services.policy_sampler.app import SamplerApp  # noqa: E402
from services.reward_node.app import RewardNodeApp, build_app  # noqa: E402
from services.reward_node.train import train_rm  # noqa: E402

NODES = ("clinic", "bank", "school")
POLICY = {"arch": "qwen2_vl", "preset": "tiny", "seed": 0}
# MOR_TEST_DEVICE=cuda runs the policy of the trainer and of the sampler on a GPU (device checks).
DEVICE = os.environ.get("MOR_TEST_DEVICE", "cpu")
torch.set_num_threads(1)


@pytest.fixture
def arun() -> Callable[..., Any]:
    def run(coro: Coroutine[Any, Any, Any], timeout: float = 240.0) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int-world") / "world"
    make_world(WorldConfig.small(seed=11, noisy_client=False), out)
    return out


def node_settings(world_dir: Path, node_id: str, checkpoint: Path) -> RewardNodeSettings:
    return RewardNodeSettings.loopback(node_id, "light", checkpoint, data_dir=world_dir,
                                       train={"epochs": 3, "batch_size": 16, "lr": 3e-3})


@pytest.fixture(scope="session")
def rm_checkpoints(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each client's real light RM (MiniLM text + CNN image features), trained on its own pairs only."""
    root = tmp_path_factory.mktemp("int-rm")
    out = {}
    world = load_world(world_dir)
    for node_id in NODES:
        assert node_id in world.clients
        out[node_id] = train_rm(node_settings(world_dir, node_id, root / node_id)).checkpoint
    return out


@dataclass
class Stack:
    nodes: dict[str, RewardNodeApp]
    sampler: SamplerApp

    def run_config(self, world_dir: Path, output_dir: Path, **overrides: Any) -> RunConfig:
        data: dict[str, Any] = {
            "seed": 0, "world": world_dir, "output_dir": output_dir, "policy": POLICY, "torch_threads": 1,
            "device": DEVICE,
            "sampler": {"address": f"127.0.0.1:{self.sampler.port}", "tls": {"insecure": True}, "timeout_s": 60},
            "nodes": [NodeEndpoint.loopback(n, app.port, 20) for n, app in self.nodes.items()],
            "grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 3, "max_new_tokens": 6, "lr": 5e-3, "beta": 0.04},
            "router": {"kind": "mor", "train_steps": 20, "pairs": 12},
            "fanout": {"step_deadline_s": 30, "min_nodes": 2},
            "checkpoint_every": 2,
        }
        for key, value in overrides.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return RunConfig(**data)


@pytest.fixture
def stack(world_dir: Path, rm_checkpoints: dict[str, Path]) -> Callable[[], contextlib.AbstractAsyncContextManager[Stack]]:
    """``async with stack() as s:`` three started reward nodes and a started sampler, all stopped on exit."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[Stack]:
        nodes = {n: build_app(node_settings(world_dir, n, rm_checkpoints[n])) for n in NODES}
        sampler = SamplerApp(SamplerSettings(
            model=POLICY, tls={"insecure": True}, metrics={"enabled": False},
            server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0}, hf={"torch_threads": 1, "device": DEVICE}))
        started: list[Any] = []
        try:
            for app in [*nodes.values(), sampler]:
                await app.start()
                started.append(app)
            yield Stack(nodes, sampler)
        finally:
            for app in started:
                with contextlib.suppress(Exception):
                    await app.stop(0)

    return run
