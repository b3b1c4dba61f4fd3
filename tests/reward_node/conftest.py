"""Fixtures of the reward-node tests: a modest synthetic world, trained checkpoints, a fast fake RM,
a dev PKI, and a runner that starts a real node on 127.0.0.1:0.

Each test runs its async scenario with ``arun(coro)`` (a timeout-bounded asyncio.run), as the
shared gRPC tests do. Torch uses one thread: the machines running the suite are small and shared.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.common import certs  # noqa: E402
from services.common.config import RewardNodeSettings  # noqa: E402
from services.common.data import WorldConfig, make_world  # noqa: E402
from services.reward_node.app import RewardNodeApp, build_app  # noqa: E402
from services.reward_node.checkpoint import LoadedRM, load_checkpoint  # noqa: E402
from services.reward_node.client import RewardNodeClient  # noqa: E402
from services.reward_node.rm.base import RewardModel  # noqa: E402
from services.reward_node.train import TrainResult, train_rm  # noqa: E402

SCENARIO_TIMEOUT_S = 30.0
torch.set_num_threads(1)


@pytest.fixture
def arun() -> Callable[..., Any]:
    def run(coro: Coroutine[Any, Any, Any], timeout: float = SCENARIO_TIMEOUT_S) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


# ---- data and trained checkpoints ---------------------------------------------------------------

def modest_world_config() -> WorldConfig:
    """Small enough to train on in seconds, large enough that held-out accuracy means something."""
    base = WorldConfig.small(seed=3)
    # The world default kind mix (half correctness): 200 pairs teach style and format, not correctness.
    clients = [c.model_copy(update={"n_pairs_train": 200, "n_pairs_test": 60, "n_labelled": 40, "kind_mix": None})
               for c in base.clients]
    return WorldConfig.small(
        seed=3,
        benchmarks={b: {"train": 260, "test": 80} for b in base.benchmarks},
        clients=[c.model_dump() for c in clients],
        noisy_client=False,
        held_out_client=None,
    )


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rn-world") / "world"
    make_world(modest_world_config(), out)
    return out


def node_settings(**overrides: Any) -> RewardNodeSettings:
    """Settings of a test node: loopback, port 0, plaintext, metrics off, unless overridden."""
    data: dict[str, Any] = {
        "node_id": "bank",
        "tls": {"insecure": True},
        "metrics": {"enabled": False},
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 5.0},
        "model": {"kind": "light", "torch_threads": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RewardNodeSettings(**data)


@pytest.fixture(scope="session")
def trained_light(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """bank's light RM on the modest world (the suite's one real light training run)."""
    out = tmp_path_factory.mktemp("rn-ckpt") / "bank"
    settings = node_settings(data_dir=str(world_dir), model={"checkpoint": str(out)},
                             train={"epochs": 15, "batch_size": 32, "lr": 3e-3})
    return train_rm(settings)


@pytest.fixture(scope="session")
def light_rm(trained_light: TrainResult) -> LoadedRM:
    return load_checkpoint(trained_light.checkpoint)


@dataclass
class WorldSample:
    question: str
    image_png: bytes
    image: Image.Image
    answers: list[str]


@pytest.fixture(scope="session")
def samples(world_dir: Path) -> list[WorldSample]:
    """A few real prompts with their images and both answers of their pair."""
    from services.common.data import load_world

    world = load_world(world_dir)
    out = []
    for p in world.pairs("bank", "test")[:6]:
        png = world.image_bytes(p.image)
        out.append(WorldSample(p.question, png, world.load_image(p.image), [p.chosen, p.rejected]))
    return out


# ---- a fast, controllable fake RM ---------------------------------------------------------------

class FakeRM(RewardModel):
    """score = number of characters of the response; ``delay_s`` per batch; records batch sizes.

    ``gate`` (a threading.Event) blocks every batch until set: tests use it to hold the model busy
    or the node in its loading state (the node runs one warm-up batch while loading)."""

    kind = "light"

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.gate = gate
        self.batches: list[int] = []
        self.running = threading.Event()

    def prepare(self, prompts: Sequence[str], images: Sequence[Any], responses: Sequence[str]) -> Any:
        return list(responses)

    def raw_scores(self, prepared: Any) -> torch.Tensor:
        self.running.set()
        if self.gate is not None:
            self.gate.wait(20)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(len(prepared))
        return torch.tensor([float(len(r)) for r in prepared])

    def architecture(self) -> dict[str, Any]:
        return {"kind": "light"}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> FakeRM:
        return cls()

    def served_batches(self) -> list[int]:
        """Batch sizes after the node's one-sample warm-up batch."""
        return self.batches[1:]


def fake_loaded(rm: FakeRM | None = None) -> LoadedRM:
    meta = {"model_version": "fake-1", "kind": "light", "score_mean": 0.0, "score_std": 1.0}
    return LoadedRM(rm or FakeRM(), meta, None)


# ---- running a node -----------------------------------------------------------------------------

@dataclass
class Running:
    app: RewardNodeApp

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def client(self, **kwargs: Any) -> RewardNodeClient:
        kwargs.setdefault("insecure", True)
        kwargs.setdefault("retries", 0)
        return RewardNodeClient.connect(self.address, **kwargs)


@pytest.fixture
def node() -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """``async with node(settings, loaded) as running:`` a started node, stopped (grace 0) on exit."""

    @contextlib.asynccontextmanager
    async def run(settings: RewardNodeSettings | None = None, loaded: LoadedRM | None = None) -> AsyncIterator[Running]:
        app = build_app(settings or node_settings(), loaded=loaded if loaded is not None else fake_loaded())
        await app.start()
        try:
            yield Running(app)
        finally:
            await app.stop(0)

    return run


def png_bytes(size: int = 16, colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(size: int, seed: int = 0) -> bytes:
    """An incompressible PNG of about 3 * size^2 bytes."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---- PKI ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    ca: Path
    server: certs.CertPaths
    client: certs.CertPaths
    rogue_client: certs.CertPaths
    tokens_file: Path
    orchestrator_token: str
    intruder_token: str


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("rn-pki")
    rogue = tmp_path_factory.mktemp("rn-rogue")
    ca = certs.init_ca(d)
    server = certs.issue(d, "bank")
    client = certs.issue(d, "orchestrator", client=True)
    certs.init_ca(rogue)
    rogue_client = certs.issue(rogue, "orchestrator", client=True)
    orch = certs.issue_token(d, "orchestrator", server="bank")
    intruder = certs.issue_token(d, "intruder", server="bank")
    return Pki(ca.cert, server, client, rogue_client, certs.tokens_path(d, "bank"), orch, intruder)
