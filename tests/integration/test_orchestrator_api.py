"""The Orchestrator gRPC API on a real server: StartRun, GetRun, WatchRun, StopRun, the node
registry, error statuses, and its metrics side port (scraped over HTTP)."""
from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import grpc
import pytest
import yaml

from services.common.config import OrchestratorSettings
from services.common.wire import orchestrator_pb2, orchestrator_pb2_grpc
from services.orchestrator.app import OrchestratorApp


def _settings(tmp_path):
    return OrchestratorSettings(runs_dir=tmp_path / "runs", tls={"insecure": True},
                                server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
                                metrics={"host": "127.0.0.1", "port": 0}, node_tls={"insecure": True})


def _run_yaml(cfg) -> str:
    data = cfg.model_dump(mode="json")
    data.pop("output_dir")
    return yaml.safe_dump(data)


@contextlib.asynccontextmanager
async def serving(tmp_path):
    """A started orchestrator API server and a stub on a channel to it; both closed on exit."""
    app = OrchestratorApp(_settings(tmp_path))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield app, orchestrator_pb2_grpc.OrchestratorStub(ch)
    finally:
        await app.stop(0)


def test_start_watch_get_run_to_completion_and_metrics(stack, world_dir, tmp_path, arun):
    async def scenario():
        async with stack() as s:
            async with serving(tmp_path) as (app, stub):
                cfg = s.run_config(world_dir, tmp_path / "ignored", grpo={"steps": 2})
                started = await stub.StartRun(orchestrator_pb2.StartRunRequest(
                    run_id="r1", config_yaml=_run_yaml(cfg), overrides=["grpo.beta=0.02"]))
                events = [ev.event async for ev in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id="r1"))]
                got = await stub.GetRun(orchestrator_pb2.GetRunRequest(run_id="r1"))
                with pytest.raises(grpc.aio.AioRpcError) as dup:
                    await stub.StartRun(orchestrator_pb2.StartRunRequest(run_id="r1", config_yaml=_run_yaml(cfg)))
                url = f"http://127.0.0.1:{app.service.metrics_port}/metrics"
                # the side port is served by this event loop: fetch from a thread
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
                return started.run, events, got.run, dup.value, body

    started, events, run, dup, body = arun(scenario())
    assert started.run_id == "r1" and started.total_steps == 2
    assert "beta: 0.02" in started.config_yaml
    steps = [e.step for e in events if e.WhichOneof("kind") == "step"]
    states = [e.state_change.state for e in events if e.WhichOneof("kind") == "state_change"]
    assert [s.step for s in steps] == [1, 2]
    assert all(len(s.nodes) == 3 and s.phase_times.total_seconds > 0 for s in steps)
    assert states[-1] == orchestrator_pb2.RUN_STATE_COMPLETED
    assert [e.sequence for e in events[1:]] == sorted(e.sequence for e in events[1:])
    assert run.state == orchestrator_pb2.RUN_STATE_COMPLETED and run.step == 2 and run.latest_metrics.step == 2
    assert run.policy_version == 2 and (tmp_path / "runs" / "r1" / "steps.jsonl").is_file()
    assert dup.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "mor_orchestrator_grpo_steps_total" in body and "mor_orchestrator_node_weight_ratio" in body


def test_stop_run_bad_config_unknown_run_and_nodes(stack, world_dir, tmp_path, arun):
    async def scenario():
        async with stack() as s:
            async with serving(tmp_path) as (app, stub):
                codes = {}
                for name, req in {
                    "bad_yaml": orchestrator_pb2.StartRunRequest(config_yaml="grpo: [unclosed"),
                    "bad_field": orchestrator_pb2.StartRunRequest(config_yaml="grpo: {group_size: 1}"),
                    "no_nodes": orchestrator_pb2.StartRunRequest(config_yaml="seed: 1"),
                }.items():
                    try:
                        await stub.StartRun(req)
                    except grpc.aio.AioRpcError as e:
                        codes[name] = (e.code(), e.details())
                try:
                    await stub.GetRun(orchestrator_pb2.GetRunRequest(run_id="nope"))
                except grpc.aio.AioRpcError as e:
                    codes["unknown"] = (e.code(), e.details())
                for n, node in s.nodes.items():
                    await stub.RegisterNode(orchestrator_pb2.RegisterNodeRequest(node_id=n, endpoint=f"127.0.0.1:{node.port}"))
                listed = await stub.ListNodes(orchestrator_pb2.ListNodesRequest())
                cfg = s.run_config(world_dir, tmp_path / "x", grpo={"steps": 50})
                data = yaml.safe_load(_run_yaml(cfg))
                data.pop("nodes")  # the registered nodes are used
                await stub.StartRun(orchestrator_pb2.StartRunRequest(run_id="long", config_yaml=yaml.safe_dump(data)))
                watch = stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id="long"))
                seen = []
                async for ev in watch:
                    seen.append(ev.event)
                    if ev.event.WhichOneof("kind") == "step" and ev.event.step.step == 1:
                        stopping = await stub.StopRun(orchestrator_pb2.StopRunRequest(run_id="long"))
                final = await stub.GetRun(orchestrator_pb2.GetRunRequest(run_id="long"))
                removed = await stub.RemoveNode(orchestrator_pb2.RemoveNodeRequest(node_id="bank"))
                after = await stub.ListNodes(orchestrator_pb2.ListNodesRequest())
                return codes, listed, stopping.run, final.run, removed, after

    codes, listed, stopping, final, removed, after = arun(scenario())
    assert codes["bad_yaml"][0] == grpc.StatusCode.INVALID_ARGUMENT and "config_yaml" in codes["bad_yaml"][1]
    assert codes["bad_field"][0] == grpc.StatusCode.INVALID_ARGUMENT and "grpo.group_size" in codes["bad_field"][1]
    assert codes["no_nodes"][0] == grpc.StatusCode.FAILED_PRECONDITION and "RegisterNode" in codes["no_nodes"][1]
    assert codes["unknown"][0] == grpc.StatusCode.NOT_FOUND
    assert [n.node_id for n in listed.nodes] == ["bank", "clinic", "school"]
    assert all(n.healthy and n.info.rm_kind and n.info.model_version.startswith("light") for n in listed.nodes)
    assert stopping.state in (orchestrator_pb2.RUN_STATE_STOPPING, orchestrator_pb2.RUN_STATE_STOPPED)
    assert final.state == orchestrator_pb2.RUN_STATE_STOPPED and 1 <= final.step < 50
    assert removed.node.node_id == "bank" and [n.node_id for n in after.nodes] == ["clinic", "school"]
