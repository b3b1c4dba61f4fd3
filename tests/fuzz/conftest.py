"""Fixtures of the wire fuzz suite: the real services started in process on 127.0.0.1:0 (a light RM
node, a tiny sampler, an orchestrator API), hosted on one asyncio loop in a thread so that the
synchronous hypothesis tests can call them, and the fuzz helpers of wirefuzz.py.

Two profiles share every test: ``default`` (a few hundred cases over all services, part of the
default suite) and ``extended`` (marker ``fuzz_extended``; MOR_FUZZ_CASES cases per service,
10,000 unless set; benchmarks/fuzz.py runs it and prints the numbers). With MOR_FUZZ_REPORT set to
a folder, each test writes its tally there as JSON.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location("wirefuzz", Path(__file__).parent / "wirefuzz.py")
wirefuzz = importlib.util.module_from_spec(_spec)
sys.modules["wirefuzz"] = wirefuzz  # dataclasses look their module up there
_spec.loader.exec_module(wirefuzz)

EXTENDED_CASES_PER_SERVICE = int(os.environ.get("MOR_FUZZ_CASES", "10000"))
PROFILES = [pytest.param("default", id="default"),
            pytest.param("extended", id="extended", marks=pytest.mark.fuzz_extended)]


@pytest.fixture(scope="session")
def wf() -> Any:
    """The helpers module (tests do not import conftest or siblings)."""
    return wirefuzz


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[Any]:
    lt = wirefuzz.LoopThread()
    yield lt
    lt.close()


@dataclass
class Served:
    """A started service on the loop thread and a raw caller on a plaintext channel to it."""

    app: Any
    port: int
    caller: Any
    loop: Any

    def call(self, coro: Any) -> Any:
        return self.loop.run(coro)


@contextlib.contextmanager
def _serving(loop_thread: Any, make_app: Callable[[], Any]) -> Iterator[Served]:
    async def start() -> tuple[Any, int, Any]:
        app = make_app()
        port = await app.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 128 * 2**20),
                                          ("grpc.max_send_message_length", 128 * 2**20)])
        return app, port, channel

    app, port, channel = loop_thread.run(start())
    try:
        yield Served(app, port, wirefuzz.RawCaller(channel), loop_thread)
    finally:
        async def stop() -> None:
            await channel.close()
            await app.stop(0)

        loop_thread.run(stop())


@pytest.fixture(scope="module")
def reward_node(loop_thread: Any) -> Iterator[Served]:
    """A reward node serving a random-init light RM (MiniLM text features + a small image CNN)."""
    from services.common.config import RewardNodeSettings
    from services.reward_node.app import build_app
    from services.reward_node.checkpoint import LoadedRM
    from services.reward_node.rm import LightRM

    torch.manual_seed(0)
    loaded = LoadedRM(LightRM().eval(), {"model_version": "light-fuzz", "kind": "light"}, None)
    cfg = RewardNodeSettings(node_id="fuzz", model={"kind": "light", "torch_threads": 1}, tls={"insecure": True},
                             metrics={"enabled": False}, server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0})
    with _serving(loop_thread, lambda: build_app(cfg, loaded=loaded)) as served:
        yield served


@pytest.fixture(scope="module")
def sampler(loop_thread: Any) -> Iterator[Served]:
    """A sampler serving the tiny Qwen2-VL policy with small limits (as tests/policy_sampler does)."""
    from services.common.config import SamplerSettings
    from services.policy_sampler.app import SamplerApp
    from services.policy_sampler.backends.hf import HFBackend

    cfg = SamplerSettings(
        model={"arch": "qwen2_vl", "preset": "tiny", "seed": 0}, tls={"insecure": True}, metrics={"enabled": False},
        server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0}, hf={"torch_threads": 1},
        max_prompts=4, max_group_size=4, max_new_tokens=8, sampling={"max_new_tokens": 6},
        limits={"max_prompt_chars": 200, "max_image_bytes": 64 * 1024},
    )
    with _serving(loop_thread, lambda: SamplerApp(cfg, HFBackend(cfg.model, cfg.hf))) as served:
        yield served


@pytest.fixture(scope="module")
def orchestrator(loop_thread: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from services.common.config import OrchestratorSettings
    from services.orchestrator.app import OrchestratorApp

    cfg = OrchestratorSettings(runs_dir=tmp_path_factory.mktemp("fuzz-runs"), tls={"insecure": True},
                               server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
                               metrics={"enabled": False}, node_tls={"insecure": True})
    with _serving(loop_thread, lambda: OrchestratorApp(cfg)) as served:
        yield served


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Any]:
    t = wirefuzz.Tally()
    yield t
    out = os.environ.get("MOR_FUZZ_REPORT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        (Path(out) / f"{name}.json").write_text(json.dumps({"test": request.node.nodeid, **t.summary(),
                                                       "report": t.report() if t.bad else ""}, sort_keys=True))


def cases(profile: str, default: int, share: float) -> int:
    """How many cases a test runs: ``default`` in the default profile, else its ``share`` of the
    extended per-service count."""
    return default if profile == "default" else max(1, round(EXTENDED_CASES_PER_SERVICE * share))


def run_cases(n: int, strategy: Any, body: Callable[[Any], None], *, profile: str) -> None:
    """Run ``body`` on ``n`` generated cases (no shrinking: bodies record into a Tally, never raise
    on a finding, so one run surveys every kind of bad answer)."""
    @settings(max_examples=n, deadline=None, database=None, derandomize=profile == "default",
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
    @given(strategy)
    def inner(case: Any) -> None:
        body(case)

    inner()


class Fz:
    """What test modules reach through the ``fz`` fixture."""

    PROFILES = PROFILES
    cases = staticmethod(cases)
    run_cases = staticmethod(run_cases)


@pytest.fixture(scope="session")
def fz() -> type[Fz]:
    return Fz


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``profile`` runs once per profile (the extended one marked)."""
    if "profile" in metafunc.fixturenames:
        metafunc.parametrize("profile", PROFILES)
