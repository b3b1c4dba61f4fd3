"""Prompt stream, checkpoints and the run manager's rules (no models, no servers)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from services.common.config import OrchestratorSettings
from services.common.data import WorldConfig, make_world
from services.common.data.world import load_world
from services.common.errors import AlreadyExists, InvalidInput, NotFound, Overloaded, VersionMismatch
from services.orchestrator import checkpoint as ckpt_io
from services.orchestrator.prompts import PromptStream
from services.orchestrator.run_control import RunManager, RunState, StateChange, set_dotted


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("rc-world") / "world"
    make_world(WorldConfig.small(seed=5), out)
    return load_world(out)


def test_prompt_stream_is_seeded_and_crosses_epochs(world):
    pool = world.prompt_pool()[:5]
    a, b, c = PromptStream(world, pool, 1), PromptStream(world, pool, 1), PromptStream(world, pool, 2)
    first = [p.prompt_id for p in a.take(7)]
    assert first == [p.prompt_id for p in b.take(7)]
    assert first != [p.prompt_id for p in c.take(7)]
    assert sorted(first[:5]) == sorted(p.id for p in pool)  # one epoch is a permutation of the pool
    assert a.state_dict() == {"epoch": 1, "position": 2}
    assert a.take(1)[0].image is not None


def test_prompt_stream_resumes_exactly(world):
    pool = world.prompt_pool()[:6]
    whole = PromptStream(world, pool, 3)
    expected = [p.prompt_id for p in whole.take(15)]
    part = PromptStream(world, pool, 3)
    head = [p.prompt_id for p in part.take(8)]
    resumed = PromptStream(world, pool, 3)
    resumed.load_state_dict(part.state_dict())
    assert head + [p.prompt_id for p in resumed.take(7)] == expected


def test_empty_pool_is_refused(world):
    with pytest.raises(ValueError, match="empty"):
        PromptStream(world, [], 0)


def test_checkpoint_round_trip_and_latest(tmp_path: Path):
    assert ckpt_io.latest(tmp_path) is None
    for step in (2, 4, 6):
        c = ckpt_io.Checkpoint(step=step, policy_version=step + 1, stream={"epoch": 0, "position": step},
                               calibration={"n": [step]}, trainer={"w": torch.full((2,), float(step))},
                               router={"r": torch.ones(1)}, rng=ckpt_io.rng_state())
        ckpt_io.save(tmp_path, c, keep=2)
    path = ckpt_io.latest(tmp_path)
    assert path is not None and path.name == "step-000006"
    assert sorted(p.name for p in ckpt_io.checkpoint_dir(tmp_path).glob("step-*")) == ["step-000004", "step-000006"]
    back = ckpt_io.load(path)
    assert (back.step, back.policy_version, back.stream) == (6, 7, {"epoch": 0, "position": 6})
    torch.testing.assert_close(back.trainer["w"], torch.full((2,), 6.0))


def test_rng_state_restores_draws():
    state = ckpt_io.rng_state()
    a = torch.rand(3)
    ckpt_io.set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), a)


def test_unreadable_checkpoint_names_the_path(tmp_path: Path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(ckpt_io.CheckpointError, match="broken"):
        ckpt_io.load(tmp_path / "broken")


def test_set_dotted_overrides():
    data = {"grpo": {"beta": 0.04}}
    set_dotted(data, "grpo.beta=0.02")
    set_dotted(data, "router.kind=mean")
    assert data == {"grpo": {"beta": 0.02}, "router": {"kind": "mean"}}
    with pytest.raises(InvalidInput, match="dotted.key=value"):
        set_dotted(data, "grpo.beta")
    with pytest.raises(InvalidInput, match="not a section"):
        set_dotted(data, "grpo.beta.x=1")


def _manager(tmp_path: Path) -> RunManager:
    return RunManager(OrchestratorSettings(runs_dir=tmp_path, tls={"insecure": True}))


def test_bad_run_config_is_invalid_input_naming_the_field(tmp_path: Path):
    m = _manager(tmp_path)
    with pytest.raises(InvalidInput, match="grpo.group_size"):
        m.parse_config("r1", {"grpo": {"group_size": 1}}, [])
    with pytest.raises(InvalidInput, match="grpo.loss_type"):
        m.parse_config("r1", {}, ["grpo.loss_type=ppo"])
    cfg = m.parse_config("r1", {}, ["grpo.steps=3"])
    assert cfg.grpo.steps == 3 and cfg.output_dir == tmp_path / "r1"


def test_run_without_nodes_is_refused_and_unknown_ids_are_not_found(tmp_path: Path):
    m = _manager(tmp_path)

    async def scenario():
        with pytest.raises(VersionMismatch, match="no reward nodes"):
            await m.start("r1", {}, [])
        with pytest.raises(NotFound):
            m.get("nope")
        with pytest.raises(NotFound):
            m.remove("nope")
        with pytest.raises(InvalidInput):
            await m.register("Bad Id", "127.0.0.1:1")
        node = await m.register("clinic", "127.0.0.1:1")  # nothing listens there
        assert not node.healthy and node.last_error
        assert [n.node_id for n in await m.list_nodes()] == ["clinic"]
        cfg = m.parse_config("r2", {}, [])
        assert [n.node_id for n in cfg.nodes] == ["clinic"]  # registered nodes fill an empty list

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_watch_replays_then_ends_on_terminal_state(tmp_path: Path):
    m = _manager(tmp_path)

    async def scenario():
        from services.orchestrator.run_control import RunHandle

        cfg = m.parse_config("w", {"nodes": [{"node_id": "a", "address": "127.0.0.1:1"}]}, [])
        h = RunHandle("w", cfg, "")
        m.runs["w"] = h
        with pytest.raises(AlreadyExists):
            await m.start("w", {}, [])
        await m._set_state(h, RunState.RUNNING, "go")
        seen = []

        async def watch():
            async for ev in m.watch("w"):
                seen.append(ev.kind.state if isinstance(ev.kind, StateChange) else ev.kind)

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.05)
        await m._set_state(h, RunState.COMPLETED, "done")
        await asyncio.wait_for(task, 5)
        assert seen == [RunState.RUNNING, RunState.COMPLETED]
        with pytest.raises(InvalidInput):
            async for _ in m.watch("w", from_step=-1):
                pass

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_device_is_validated_and_cuda_without_a_gpu_fails_at_start(world, tmp_path: Path):
    from services.common.config import ConfigError, RunConfig
    from services.orchestrator.training_run import MoRRun

    with pytest.raises(ValueError, match="device"):
        RunConfig(device="tpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = MoRRun(RunConfig(world=world.root, output_dir=tmp_path, device="cuda"))
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        asyncio.run(run.run())


def test_the_node_registry_and_the_run_list_are_bounded(tmp_path: Path):
    m = RunManager(OrchestratorSettings(runs_dir=tmp_path, tls={"insecure": True}, max_nodes=2, max_finished_runs=1))

    async def scenario():
        from services.orchestrator.run_control import RunHandle

        await m.register("clinic", "127.0.0.1:1")
        await m.register("bank", "127.0.0.1:1")
        with pytest.raises(Overloaded, match="max_nodes") as refused:
            await m.register("school", "127.0.0.1:1")
        assert refused.value.reason == "TOO_MANY_NODES"
        await m.register("bank", "127.0.0.1:2")  # an update of a registered node is not a new one
        m.remove("clinic")
        await m.register("school", "127.0.0.1:1")
        assert sorted(m.nodes) == ["bank", "school"]

        cfg = m.parse_config("a", {"nodes": [{"node_id": "a", "address": "127.0.0.1:1"}]}, [])
        for run_id, state in (("old", RunState.COMPLETED), ("newer", RunState.FAILED), ("live", RunState.RUNNING)):
            m.runs[run_id] = RunHandle(run_id, cfg, "")
            m.runs[run_id].state = state
        m._forget_finished(keep=m.settings.max_finished_runs)
        assert list(m.runs) == ["newer", "live"]  # the oldest ended run goes; a live one never does

    asyncio.run(asyncio.wait_for(scenario(), 30))
