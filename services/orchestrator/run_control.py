"""Run control behind the Orchestrator API: start, watch, stop runs; the registry of reward nodes.

Domain code: no gRPC here (servicer.py adapts it). A run's events are kept in memory in order,
each with a sequence number, so a watcher can replay from a step and then follow live events.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from services.common.config import ConfigError, NodeEndpoint, OrchestratorSettings, RunConfig, build
from services.common.errors import AlreadyExists, InvalidInput, NotFound, Overloaded, VersionMismatch
from services.orchestrator.records import StepRecord

log = logging.getLogger(__name__)


class RunState(enum.Enum):
    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    COMPLETED = 5
    FAILED = 6

    @property
    def terminal(self) -> bool:
        return self in (RunState.STOPPED, RunState.COMPLETED, RunState.FAILED)


@dataclass(frozen=True)
class StateChange:
    previous: RunState | None
    state: RunState
    reason: str


@dataclass(frozen=True)
class RunEvent:
    sequence: int
    time: float
    run_id: str
    kind: StepRecord | StateChange


@dataclass
class RunHandle:
    """A run and everything the API reports about it."""

    run_id: str
    config: RunConfig
    config_yaml: str
    state: RunState = RunState.PENDING
    create_time: float = field(default_factory=time.time)
    update_time: float = field(default_factory=time.time)
    error: str = ""
    latest: StepRecord | None = None
    events: list[RunEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    run: Any = None  # the MoRRun

    @property
    def step(self) -> int:
        return self.latest.step if self.latest else 0

    @property
    def policy_version(self) -> int:
        return self.run.policy_version if self.run is not None else 0


# Bounds of a config that arrives over the wire (a real run config is a few KB, a few levels deep).
MAX_CONFIG_YAML_CHARS = 256 * 1024
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 100_000


def _plain_key(key: Any) -> str:
    """A mapping key as JSON would write it (YAML allows ints, floats, bools, null, dates)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    return str(key)


def plain_config(value: Any, what: str) -> Any:
    """YAML-loaded data as plain JSON data (dicts with str keys, lists, str, numbers, bools,
    None; other scalars as str). Refuses, as InvalidInput, data deeper than MAX_CONFIG_DEPTH or
    with more than MAX_CONFIG_NODES nodes once aliases are expanded: an alias bomb ("billion
    laughs") is a few hundred bytes of YAML, and a recursive alias never ends."""
    budget = [MAX_CONFIG_NODES]

    def conv(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidInput(f"{what}: more than {MAX_CONFIG_NODES} values once YAML aliases are expanded",
                               reason="CONFIG_TOO_LARGE")
        if depth > MAX_CONFIG_DEPTH:
            raise InvalidInput(f"{what}: nested deeper than {MAX_CONFIG_DEPTH} levels (or a recursive YAML alias)",
                               reason="CONFIG_TOO_DEEP")
        if isinstance(v, dict):
            return {_plain_key(k): conv(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x, depth + 1) for x in v]
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return str(v)

    return conv(value, 0)


def load_untrusted_yaml(text: str, what: str) -> Any:
    """`text` parsed as YAML into plain data (see plain_config); every failure is InvalidInput."""
    if len(text) > MAX_CONFIG_YAML_CHARS:
        raise InvalidInput(f"{what}: {len(text)} characters, limit is {MAX_CONFIG_YAML_CHARS}",
                           reason="CONFIG_TOO_LARGE")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{what}: not valid YAML ({exc})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise InvalidInput(f"{what}: nested too deep to parse", reason="CONFIG_TOO_DEEP") from None
    return plain_config(data, what)


def set_dotted(data: dict[str, Any], override: str) -> None:
    """Apply "a.b.c=value" (value parsed as YAML) to a nested dict."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise InvalidInput(f"override {override!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise InvalidInput(f"override {override!r}: {p} is not a section")
        node = nxt
    node[parts[-1]] = load_untrusted_yaml(raw, f"override {override!r}: value")


@dataclass
class NodeRecord:
    node_id: str
    endpoint: str
    healthy: bool = False
    last_check: float | None = None
    info: Any = None
    last_error: str = ""


class RunManager:
    """All runs of one orchestrator process and its node registry."""

    def __init__(self, settings: OrchestratorSettings, parallel: Any = None) -> None:
        self.settings = settings
        self.parallel = parallel  # a ParallelContext under torchrun: every run's trainer spans the ranks
        self.runs: dict[str, RunHandle] = {}
        self.nodes: dict[str, NodeRecord] = {}

    # ---- runs ------------------------------------------------------------------------------------
    def parse_config(self, run_id: str, data: dict[str, Any], overrides: list[str]) -> RunConfig:
        for o in overrides:
            set_dotted(data, o)
        data["output_dir"] = str(self.settings.runs_dir / run_id)  # the server decides where runs write
        if not data.get("nodes"):
            data["nodes"] = [self._endpoint(n).model_dump(mode="json") for n in sorted(self.nodes.values(), key=lambda n: n.node_id)]
        try:
            return build(RunConfig, data, "run config")
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from None

    def _endpoint(self, node: NodeRecord) -> NodeEndpoint:
        s = self.settings
        return NodeEndpoint(node_id=node.node_id, address=node.endpoint, tls=s.node_tls, auth=s.node_auth)

    async def start(self, run_id: str, data: dict[str, Any], overrides: list[str]) -> RunHandle:
        from services.orchestrator.training_run import MoRRun

        run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
        if run_id in self.runs:
            raise AlreadyExists(f"run {run_id!r} exists")
        active = sum(1 for h in self.runs.values() if not h.state.terminal)
        if active >= self.settings.max_concurrent_runs:
            raise Overloaded(f"{active} run(s) active; max_concurrent_runs={self.settings.max_concurrent_runs}")
        cfg = self.parse_config(run_id, data, overrides)
        if not cfg.nodes:
            raise VersionMismatch("no reward nodes: give nodes in the config or RegisterNode first",
                                  reason="NO_NODES")
        handle = RunHandle(run_id, cfg, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self._forget_finished(keep=self.settings.max_finished_runs)
        self.runs[run_id] = handle
        await self._emit(handle, StateChange(None, RunState.PENDING, "accepted"))
        handle.run = MoRRun(cfg, on_step=lambda r: self._on_step(handle, r), parallel=self.parallel)
        handle.task = asyncio.create_task(self._drive(handle), name=f"run-{run_id}")
        return handle

    def _forget_finished(self, keep: int) -> None:
        """Drop all but the newest ``keep`` ended runs: each holds its config and every step's record,
        and StartRun is callable without end."""
        ended = [h for h in self.runs.values() if h.state.terminal]  # dicts keep insertion order: oldest first
        for h in ended[: max(len(ended) - keep, 0)]:
            del self.runs[h.run_id]

    def _on_step(self, handle: RunHandle, record: StepRecord) -> None:
        handle.latest = record
        asyncio.ensure_future(self._emit(handle, record))

    async def _drive(self, handle: RunHandle) -> None:
        try:
            await self._set_state(handle, RunState.RUNNING, "started")
            result = await handle.run.run()
            end = RunState.STOPPED if result.stopped and result.steps_done < handle.config.grpo.steps else RunState.COMPLETED
            await self._set_state(handle, end, "stop requested" if end is RunState.STOPPED else "all steps done")
        except asyncio.CancelledError:
            await self._set_state(handle, RunState.STOPPED, "orchestrator shutting down")
            raise
        except Exception as exc:  # a failed run is reported, not raised into the server
            log.exception("run %s failed", handle.run_id)
            handle.error = f"{type(exc).__name__}: {exc}"
            await self._set_state(handle, RunState.FAILED, handle.error)

    async def _set_state(self, handle: RunHandle, state: RunState, reason: str) -> None:
        if handle.state is state or handle.state.terminal:
            return
        previous, handle.state = handle.state, state
        await self._emit(handle, StateChange(previous, state, reason))

    async def _emit(self, handle: RunHandle, kind: StepRecord | StateChange) -> None:
        async with handle.changed:
            handle.events.append(RunEvent(len(handle.events) + 1, time.time(), handle.run_id, kind))
            handle.update_time = time.time()
            handle.changed.notify_all()

    def get(self, run_id: str) -> RunHandle:
        try:
            return self.runs[run_id]
        except KeyError:
            raise NotFound(f"run {run_id!r} not found") from None

    async def stop(self, run_id: str) -> RunHandle:
        handle = self.get(run_id)
        if not handle.state.terminal:
            handle.run.request_stop()
            await self._set_state(handle, RunState.STOPPING, "stop requested")
        return handle

    async def watch(self, run_id: str, from_step: int = 0) -> AsyncIterator[RunEvent]:
        """The current state first, then replayed steps >= from_step (when > 0), then live events,
        until the run reaches a terminal state."""
        if from_step < 0:
            raise InvalidInput(f"from_step must be >= 0 (got {from_step})")
        handle = self.get(run_id)
        async with handle.changed:
            seen = len(handle.events)
            yield RunEvent(0, time.time(), run_id, StateChange(None, handle.state, "current state"))
            if from_step > 0:
                for ev in handle.events[:seen]:
                    if isinstance(ev.kind, StepRecord) and ev.kind.step >= from_step:
                        yield ev
        while True:
            async with handle.changed:
                while len(handle.events) == seen and not handle.state.terminal:
                    await handle.changed.wait()
                new, seen = handle.events[seen:], len(handle.events)
            for ev in new:
                yield ev
            if handle.state.terminal and seen == len(handle.events):
                return

    async def shutdown(self) -> None:
        for handle in self.runs.values():
            if handle.task is not None and not handle.task.done():
                handle.run.request_stop()
        tasks = [h.task for h in self.runs.values() if h.task is not None]
        if tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)

    # ---- nodes -----------------------------------------------------------------------------------
    async def register(self, node_id: str, endpoint: str) -> NodeRecord:
        try:
            NodeEndpoint(node_id=node_id, address=endpoint)
        except Exception as exc:
            msg = str(exc).splitlines()
            raise InvalidInput(f"node_id/endpoint invalid: {' '.join(msg[1:]) or msg[0]}") from None
        if node_id not in self.nodes and len(self.nodes) >= self.settings.max_nodes:
            raise Overloaded(f"the node registry holds {len(self.nodes)} nodes (max_nodes); remove one first",
                             reason="TOO_MANY_NODES")
        node = self.nodes.setdefault(node_id, NodeRecord(node_id, endpoint))
        node.endpoint = endpoint
        await self.check(node)
        return node

    async def check(self, node: NodeRecord, timeout: float = 2.0) -> None:
        from services.reward_node.client import RewardNodeClient

        client = RewardNodeClient(self._endpoint(node), retries=0)
        try:
            node.healthy = await client.health(timeout=timeout) == "SERVING"
            node.info = await client.info(timeout=timeout) if node.healthy else node.info
            node.last_error = "" if node.healthy else "not serving"
        except Exception as exc:  # any failure to reach it is a health result, not an error
            if hasattr(exc, "code") and hasattr(exc, "details"):  # an RpcError; a TLS failure says which side refused
                from services.common.grpc.tls_diagnosis import adescribe_rpc_error

                ep = self._endpoint(node)
                details = await adescribe_rpc_error(exc, ep.address, ep.tls)
            else:
                details = str(exc)
            node.healthy, node.last_error = False, f"{type(exc).__name__}: {details}"
        finally:
            node.last_check = time.time()
            await client.close()

    async def list_nodes(self) -> list[NodeRecord]:
        nodes = sorted(self.nodes.values(), key=lambda n: n.node_id)
        await asyncio.gather(*(self.check(n) for n in nodes))
        return nodes

    def remove(self, node_id: str) -> NodeRecord:
        try:
            return self.nodes.pop(node_id)
        except KeyError:
            raise NotFound(f"node {node_id!r} not registered") from None


__all__ = ["RunEvent", "RunHandle", "RunManager", "RunState", "StateChange", "load_untrusted_yaml", "plain_config",
           "set_dotted"]
