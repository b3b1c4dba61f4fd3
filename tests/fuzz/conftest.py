"""Fixtures of the wire fuzz suite: the real services, each started in its own process with the
real CLI (``python -m services.cli reward-node | sampler | orchestrator serve -c <yaml>`` on
127.0.0.1, port 0, read from the start line: a light RM node, a tiny sampler, an orchestrator
API), a client channel to each on one asyncio loop in a thread so that the synchronous hypothesis
tests can call them, and the fuzz helpers of wirefuzz.py. The servers a session's fuzz tests use
start side by side before the first of those tests; each stops after the last test module that
uses it. The RSS the tests bound is the server process's (wirefuzz.Tally), not the test
process's, which holds hypothesis and the case generator.

Two profiles share every test: ``default`` (a few hundred cases over all services, part of the
default suite) and ``extended`` (marker ``fuzz_extended``; MOR_FUZZ_CASES cases per service,
10,000 unless set; benchmarks/fuzz.py runs it and prints the numbers). With MOR_FUZZ_REPORT set to
a folder, each test writes its tally there as JSON.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import yaml
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
HERE = Path(__file__).parent
SERVER = {"host": "127.0.0.1", "port": 0, "grace_s": 1.0}


@pytest.fixture(scope="session")
def wf() -> Any:
    """The helpers module (tests do not import conftest or siblings)."""
    return wirefuzz


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[Any]:
    lt = wirefuzz.LoopThread()
    yield lt
    lt.close()


# ---- server configs (what the in-process fixtures used to build, as `serve` YAML) ----------------

def _reward_node_config(folder: Path) -> dict[str, Any]:
    """A reward node serving a random-init light RM (MiniLM text features + a small image CNN),
    saved as a checkpoint for `reward-node serve` to load."""
    from services.reward_node.checkpoint import save_checkpoint
    from services.reward_node.rm import LightRM

    torch.manual_seed(0)
    save_checkpoint(LightRM().eval(), folder / "light-rm", {"node_id": "fuzz"})
    return {"node_id": "fuzz", "model": {"kind": "light", "checkpoint": str(folder / "light-rm"), "torch_threads": 1},
            "tls": {"insecure": True}, "metrics": {"enabled": False}, "server": SERVER}


def _sampler_config(folder: Path) -> dict[str, Any]:
    """A sampler serving the tiny Qwen2-VL policy with small limits (as tests/policy_sampler does)."""
    return {"model": {"arch": "qwen2_vl", "preset": "tiny", "seed": 0}, "tls": {"insecure": True},
            "metrics": {"enabled": False}, "server": SERVER, "hf": {"torch_threads": 1},
            "max_prompts": 4, "max_group_size": 4, "max_new_tokens": 8, "sampling": {"max_new_tokens": 6},
            "limits": {"max_prompt_chars": 200, "max_image_bytes": 64 * 1024}}


def _orchestrator_config(folder: Path) -> dict[str, Any]:
    (folder / "runs").mkdir(exist_ok=True)
    return {"runs_dir": str(folder / "runs"), "tls": {"insecure": True}, "server": SERVER,
            "metrics": {"enabled": False}, "node_tls": {"insecure": True}}


# fixture name -> (CLI command group, config builder)
SERVERS: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "reward_node": ("reward-node", _reward_node_config),
    "sampler": ("sampler", _sampler_config),
    "orchestrator": ("orchestrator", _orchestrator_config),
}


# The reward node's config needs a checkpoint written first; the others start right away.
LAUNCH_ORDER = ("orchestrator", "sampler", "reward_node")


def _import_for_adapter() -> None:
    import peft  # noqa: F401

    import services.common.models  # noqa: F401
    import services.common.weights_codec  # noqa: F401


class Servers:
    """The server processes of the session, by fixture name. A server stays up from its launch
    until the end of the last test module that uses it (modules share it: the findings and the
    orchestrator modules both fuzz one orchestrator), then gets SIGTERM; the session's end waits
    for them all."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, items: list[pytest.Item]) -> None:
        self._tmp = tmp_path_factory
        self._procs: dict[str, Any] = {}
        self._done: list[Any] = []
        self.last_module: dict[str, str] = {}  # fixture name -> the last module (path) that uses it
        for item in items:
            if HERE in Path(str(item.path)).parents:
                for name in SERVERS:
                    if name in getattr(item, "fixturenames", ()):
                        self.last_module[name] = str(item.path)

    def launch(self, name: str) -> Any:
        if name not in self._procs:
            command, make_config = SERVERS[name]
            folder = self._tmp.mktemp(f"fuzz-{name}")
            config = folder / "config.yaml"
            config.write_text(yaml.safe_dump(make_config(folder)))
            self._procs[name] = wirefuzz.ServerProcess(command, config).launch()
        return self._procs[name]

    def ready(self, name: str) -> Any:
        proc = self.launch(name)
        proc.wait_ready()
        return proc

    def release(self, name: str, module: str) -> None:
        """The end of ``module``: SIGTERM to the server when no later module uses it."""
        if self.last_module.get(name, module) == module and name in self._procs:
            proc = self._procs.pop(name)
            proc.terminate()
            self._done.append(proc)

    def stop_all(self) -> None:
        procs, self._procs = [*self._done, *self._procs.values()], {}
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Launches, side by side, every server that this session's fuzz tests use (their start-up,
    mostly imports, overlaps) and waits until all are up, so that none is still starting while
    tests run (some time their answers)."""
    pool = Servers(tmp_path_factory, request.session.items)
    # While they start, this process imports what the sampler tests' LoRA adapter needs (peft,
    # transformers: seconds that the in-process sampler used to pay for).
    warm = threading.Thread(target=_import_for_adapter, name="fuzz-warm-imports", daemon=True)
    try:
        wanted = [name for name in LAUNCH_ORDER if name in pool.last_module]
        for name in wanted:
            with contextlib.suppress(Exception):  # a server that cannot start fails its own module's
                pool.launch(name)                 # tests (its fixture tries again), not the others
        if "sampler" in wanted:
            warm.start()
        for name in wanted:
            with contextlib.suppress(Exception):
                pool.ready(name)
        if warm.is_alive():
            warm.join()
        yield pool
    finally:
        pool.stop_all()


@dataclass
class Served:
    """A server process under test and a raw caller on a plaintext channel to it."""

    proc: Any  # wirefuzz.ServerProcess
    port: int
    caller: Any
    loop: Any

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, coro: Any) -> Any:
        return self.loop.run(coro)


@contextlib.contextmanager
def _serving(request: pytest.FixtureRequest, servers: Servers, loop_thread: Any, name: str) -> Iterator[Served]:
    proc = servers.ready(name)

    async def connect() -> Any:
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{proc.port}", options=[("grpc.max_receive_message_length", 128 * 2**20),
                                               ("grpc.max_send_message_length", 128 * 2**20)])

    channel = loop_thread.run(connect())
    try:
        yield Served(proc, proc.port, wirefuzz.RawCaller(channel), loop_thread)
    finally:
        loop_thread.run(channel.close())
        servers.release(name, str(request.path))


@pytest.fixture(scope="module")
def reward_node(request: pytest.FixtureRequest, servers: Servers, loop_thread: Any) -> Iterator[Served]:
    """`mor reward-node serve`: a random-init light RM."""
    with _serving(request, servers, loop_thread, "reward_node") as served:
        yield served


@pytest.fixture(scope="module")
def sampler(request: pytest.FixtureRequest, servers: Servers, loop_thread: Any) -> Iterator[Served]:
    """`mor sampler serve`: the tiny Qwen2-VL policy with small limits."""
    with _serving(request, servers, loop_thread, "sampler") as served:
        yield served


@pytest.fixture(scope="module")
def orchestrator(request: pytest.FixtureRequest, servers: Servers, loop_thread: Any) -> Iterator[Served]:
    """`mor orchestrator serve`: the Orchestrator API, runs under a temporary runs_dir."""
    with _serving(request, servers, loop_thread, "orchestrator") as served:
        yield served


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A Tally on the RSS of the server process the test fuzzes (the server fixture it uses)."""
    served = next((request.getfixturevalue(n) for n in SERVERS if n in request.fixturenames), None)
    t = wirefuzz.Tally(served.pid if served else None, server_log=served.proc.log_tail if served else None)
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


# Cases per hypothesis run in the extended profile. One run keeps every case's choices until it
# ends (its data tree and a cache of up to 10,000 results): at 10,000 cases that grew the test
# process by 1-1.5 GB (ScoreBatch, StartRun). Fresh runs of this many cases keep it to ~100 MB.
CHUNK_CASES = 250


def run_cases(n: int, strategy: Any, body: Callable[[Any], None], *, profile: str) -> None:
    """Run ``body`` on ``n`` generated cases (no shrinking: bodies record into a Tally, never raise
    on a finding, so one run surveys every kind of bad answer). The default profile is one
    derandomized run; the extended one runs CHUNK_CASES at a time, each run with fresh random
    cases, and returns the memory of each run to the OS before the next."""
    derandomize = profile == "default"
    step = n if derandomize else CHUNK_CASES
    done = 0
    while done < n:
        k = min(step, n - done)

        @settings(max_examples=k, deadline=None, database=None, derandomize=derandomize,
                  suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
        @given(strategy)
        def inner(case: Any) -> None:
            body(case)

        inner()
        done += k
        if not derandomize:
            del inner
            gc.collect()
            wirefuzz.trim_memory()


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
