"""`torchrun --nproc-per-node 2 -m services.cli orchestrator run` against the real stack (3 reward nodes
and the sampler in this process, on 127.0.0.1): rank 0 runs fan-out, router, push and checkpoints, both
ranks train. FSDP2 with the remote sampler is compared with the same run in one process; DDP samples in
process on rank 0."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml

from services.orchestrator import checkpoint as ckpt_io
from services.orchestrator.records import read_steps
from services.orchestrator.training_run import MoRRun

from .conftest import DEVICE

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,  # about 2 minutes on 2 cores: a torchrun launch per test beside the in-process stack
    pytest.mark.skipif(DEVICE != "cpu", reason="the 2-process run uses gloo on CPU here"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _torchrun(cfg, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # An asyncio subprocess: the reward nodes and the sampler of this process keep serving meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "-m", "services.cli", "orchestrator", "run", "-c", str(path), "--quiet",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-4000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def _checkpoint_params(output_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(ckpt_io.latest(output_dir)).trainer["params"]


def test_fsdp_run_in_two_processes_trains_like_one(stack, world_dir, tmp_path, arun):
    async def two():
        async with stack() as s:
            cfg = s.run_config(world_dir, tmp_path / "two", distributed={"strategy": "fsdp"})
            return await _torchrun(cfg, tmp_path / "two")

    async def one():
        async with stack() as s:
            return await MoRRun(s.run_config(world_dir, tmp_path / "one")).run()

    result = arun(two(), timeout=300)
    single = arun(one())

    assert result["trainer_processes"] == 2 and single.trainer_processes == 1
    assert result["steps_done"] == 3 and result["policy_version"] == 3 == single.policy_version
    steps = read_steps(tmp_path / "two" / "steps.jsonl")
    assert [r.step for r in steps] == [1, 2, 3] and all(len(r.nodes) == 3 for r in steps)
    assert steps[0].kl < 1e-4 < steps[-1].kl  # the pushed policy moved, and rank 0 reports the whole batch's KL
    assert (tmp_path / "two" / "policy" / "config.json").is_file()  # exported once, merged, from the shards
    a, b = _checkpoint_params(tmp_path / "one"), _checkpoint_params(tmp_path / "two")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
    assert max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-3
    # The final policy rank 0 merged from the gathered shards is the one-process run's merged policy.
    from safetensors.torch import load_file

    merged = [load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("one", "two")]
    assert merged[0].keys() == merged[1].keys()
    assert max(float((merged[0][k] - merged[1][k]).abs().max()) for k in merged[0]) <= 1e-4


def test_ddp_run_samples_on_rank_zero_and_resumes_in_one_process(stack, world_dir, tmp_path, arun):
    async def two():
        async with stack() as s:
            cfg = s.run_config(world_dir, tmp_path / "run", sampler=None, grpo={"steps": 2},
                               distributed={"strategy": "ddp"})
            return await _torchrun(cfg, tmp_path / "run")

    async def resumed():
        async with stack() as s:
            cfg = s.run_config(world_dir, tmp_path / "run", sampler=None, grpo={"steps": 3})
            return await MoRRun(cfg, resume=True).run()

    result = arun(two(), timeout=300)
    after = arun(resumed())

    assert result["steps_done"] == 2 and result["trainer_processes"] == 2
    assert after.steps_done == 3  # the 2-process checkpoint continued in one process
    assert [r.step for r in read_steps(tmp_path / "run" / "steps.jsonl")] == [1, 2, 3]


def test_serve_under_torchrun_hosts_one_trainer_per_run_on_every_rank(stack, world_dir, tmp_path, arun):
    import signal

    import grpc

    from services.common.wire import orchestrator_pb2, orchestrator_pb2_grpc

    port = _free_port()
    settings = {"runs_dir": str(tmp_path / "runs"), "tls": {"insecure": True}, "node_tls": {"insecure": True},
                "server": {"host": "127.0.0.1", "port": port, "grace_s": 1.0}, "metrics": {"enabled": False}}
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(settings))

    async def scenario():
        async with stack() as s:
            env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port()), "-m", "services.cli", "orchestrator", "serve",
                "-c", str(tmp_path / "orchestrator.yaml"), cwd=ROOT, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    await asyncio.wait_for(ch.channel_ready(), 120)
                    stub = orchestrator_pb2_grpc.OrchestratorStub(ch)
                    states = {}
                    for run_id, steps in (("r1", 2), ("r2", 1)):  # the workers host a fresh trainer per run
                        cfg = s.run_config(world_dir, tmp_path / "ignored", grpo={"steps": steps})
                        data = cfg.model_dump(mode="json")
                        data.pop("output_dir")
                        await stub.StartRun(orchestrator_pb2.StartRunRequest(run_id=run_id, config_yaml=yaml.safe_dump(data)))
                        async for _ in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=run_id)):
                            pass
                        got = await stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=run_id))
                        states[run_id] = (got.run.state, got.run.step, got.run.error_message)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), 60)
                except asyncio.TimeoutError:
                    proc.kill()
                    _, err = await proc.communicate()
            return states, err.decode()

    states, err = arun(scenario(), timeout=400)

    for run_id, steps in (("r1", 2), ("r2", 1)):
        assert states[run_id][:2] == (orchestrator_pb2_state_completed(), steps), (states, err[-3000:])
        result = json.loads((tmp_path / "runs" / run_id / "result.json").read_text())
        assert result["trainer_processes"] == 2 and result["steps_done"] == steps


def orchestrator_pb2_state_completed() -> int:
    from services.common.wire import orchestrator_pb2

    return orchestrator_pb2.RUN_STATE_COMPLETED
