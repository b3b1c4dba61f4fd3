"""Fixtures of the orchestrator tests: real reward nodes on 127.0.0.1:0 serving a fast fake RM,
a timeout-bounded ``arun``, and the shared frozen prompt embedder.

The fake RM is local on purpose (tests/reward_node/conftest.py cannot be imported under
--import-mode=importlib): it scores with a function of (prompt, response) given by the test, so
a test knows every expected score in closed form. ``delay_s`` is read on every batch, so a test
can make a started node slow without slowing its warm-up.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.common.config import RewardNodeSettings  # noqa: E402
from services.common.config.sections import NodeEndpoint  # noqa: E402
from services.reward_node.app import RewardNodeApp, build_app  # noqa: E402
from services.reward_node.checkpoint import LoadedRM  # noqa: E402
from services.reward_node.rm.base import RewardModel  # noqa: E402

SCENARIO_TIMEOUT_S = 30.0
torch.set_num_threads(1)

ScoreFn = Callable[[str, str], float]


@pytest.fixture
def arun() -> Callable[..., Any]:
    def run(coro: Coroutine[Any, Any, Any], timeout: float = SCENARIO_TIMEOUT_S) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


class FnRM(RewardModel):
    """score = fn(prompt, response); sleeps ``delay_s`` per batch (set it after the node started)."""

    kind = "light"

    def __init__(self, fn: ScoreFn) -> None:
        super().__init__()
        self.fn = fn
        self.delay_s = 0.0

    def prepare(self, prompts: Sequence[str], images: Sequence[Any], responses: Sequence[str]) -> Any:
        return list(zip(prompts, responses, strict=True))

    def raw_scores(self, prepared: Any) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        return torch.tensor([float(self.fn(p, r)) for p, r in prepared])

    def architecture(self) -> dict[str, Any]:
        return {"kind": "light"}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> FnRM:
        return cls(lambda p, r: 0.0)


def fn_loaded(rm: FnRM, *, score_mean: float = 0.0, score_std: float = 1.0,
              prototype: torch.Tensor | None = None) -> LoadedRM:
    meta: dict[str, Any] = {"model_version": "fn-1", "kind": "light", "score_mean": score_mean, "score_std": score_std}
    if prototype is not None:
        meta["prototype"] = {"embedder": "sentence-transformers/all-MiniLM-L6-v2", "dim": int(prototype.numel())}
    return LoadedRM(rm, meta, prototype)


def node_settings(node_id: str, port: int = 0, **overrides: Any) -> RewardNodeSettings:
    data: dict[str, Any] = {
        "node_id": node_id,
        "tls": {"insecure": True},
        "metrics": {"enabled": False},
        "server": {"host": "127.0.0.1", "port": port, "grace_s": 0.0},
        "model": {"kind": "light", "torch_threads": 1},
    }
    data.update(overrides)
    return RewardNodeSettings(**data)


@dataclass
class FakeNode:
    """A reward node that can be stopped and started again on the same port."""

    node_id: str
    rm: FnRM
    score_mean: float = 0.0
    score_std: float = 1.0
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    prototype: torch.Tensor | None = None  # published in GetInfo (without noise) when set
    port: int = 0
    app: RewardNodeApp | None = None

    async def start(self) -> None:
        overrides = dict(self.settings_overrides)
        if self.prototype is not None:
            overrides.setdefault("prototype", {"publish": True, "noise_sigma": 0.0})  # exact: routing tests compare it
        settings = node_settings(self.node_id, self.port, **overrides)
        loaded = fn_loaded(self.rm, score_mean=self.score_mean, score_std=self.score_std, prototype=self.prototype)
        self.app = build_app(settings, loaded=loaded)
        self.port = await self.app.start()

    async def stop(self) -> None:
        if self.app is not None:
            app, self.app = self.app, None
            await app.stop(0)

    def endpoint(self, timeout_s: float = 5.0) -> NodeEndpoint:
        return NodeEndpoint.loopback(self.node_id, self.port, timeout_s)


@pytest.fixture
def nodes() -> Callable[..., contextlib.AbstractAsyncContextManager[list[FakeNode]]]:
    """``async with nodes({"a": fn, "b": fn2}, limits={"b": {...}}) as running:`` started FakeNodes
    (in that order), stopped on exit. Keyword arguments are per-node settings overrides, except
    ``prototypes`` (node -> embedding to publish in GetInfo)."""

    @contextlib.asynccontextmanager
    async def run(fns: dict[str, ScoreFn], prototypes: dict[str, torch.Tensor] | None = None,
                  **per_node: dict[str, Any]) -> AsyncIterator[list[FakeNode]]:
        made = []
        for node_id, fn in fns.items():
            overrides = {key: value[node_id] for key, value in per_node.items() if node_id in value}
            made.append(FakeNode(node_id, FnRM(fn), settings_overrides=overrides,
                                 prototype=(prototypes or {}).get(node_id)))
        try:
            await asyncio.gather(*(n.start() for n in made))
            yield made
        finally:
            for n in made:
                n.rm.delay_s = 0.0
            await asyncio.gather(*(n.stop() for n in made), return_exceptions=True)

    return run


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real frozen embedder (MiniLM from site-packages), shared: loading it takes seconds."""
    from services.orchestrator.embedding import PromptEmbedder

    return PromptEmbedder()
