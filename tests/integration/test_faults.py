"""Faults on real processes: a reward node killed with SIGKILL and restarted, a node frozen past the
step deadline (SIGSTOP), and the orchestrator killed with SIGKILL and resumed. Each node here is a
`mor reward-node serve` process on 127.0.0.1; the first test is the default suite's fast
representative, the others run with `-m slow`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from services.common.config import NodeEndpoint
from services.orchestrator.records import read_steps
from services.orchestrator.training_run import MoRRun
from tests.service_process import ServerProcess

from .conftest import DEVICE, NODES

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def node_config(tmp_path: Path, node_id: str, checkpoint: Path) -> Path:
    path = tmp_path / f"{node_id}.yaml"
    path.write_text(yaml.safe_dump({
        "node_id": node_id, "model": {"kind": "light", "checkpoint": str(checkpoint), "torch_threads": 1},
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 1.0}, "tls": {"insecure": True},
        "metrics": {"enabled": False},
    }))
    return path


def sampler_config(tmp_path: Path) -> Path:
    path = tmp_path / "sampler.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"arch": "qwen2_vl", "preset": "tiny", "seed": 0}, "hf": {"torch_threads": 1},
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 1.0}, "tls": {"insecure": True},
        "metrics": {"enabled": False},
    }))
    return path


def responded(steps, node_id: str) -> dict[int, bool]:
    return {r.step: next(n.responded for n in r.nodes if n.node_id == node_id) for r in steps}


def test_a_node_killed_with_sigkill_at_step_5_and_restarted_is_readmitted(stack, world_dir, rm_checkpoints, tmp_path, arun):
    school = ServerProcess("reward-node", node_config(tmp_path, "school", rm_checkpoints["school"])).start()

    async def scenario():
        async with stack() as s:
            nodes = [NodeEndpoint.loopback(n, s.nodes[n].port, 20) for n in ("clinic", "bank")]
            nodes.append(NodeEndpoint.loopback("school", school.port, 20))
            cfg = s.run_config(world_dir, tmp_path / "run", nodes=nodes,
                               grpo={"steps": 20, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
                               fanout={"step_deadline_s": 20, "min_nodes": 2}, checkpoint_every=100)
            restart = threading.Thread(target=school.start)

            def on_step(record):
                if record.step == 5:
                    school.signal(signal.SIGKILL)
                    restart.start()  # a new process on the same port, ready while steps go on
                if record.step == 6:
                    restart.join(120)  # steps take ~0.5 s and a start ~5 s: hold the run until it serves

            return await MoRRun(cfg, on_step=on_step).run()

    try:
        result = arun(scenario(), timeout=600)
    finally:
        school.kill()

    assert result.steps_done == 20
    answered = responded(read_steps(tmp_path / "run" / "steps.jsonl"), "school")
    assert all(answered[k] for k in range(1, 6))
    assert not answered[6]  # dead: dropped for the step, and the step still done
    # probed before every step: re-admitted at the first step after it serves again, and kept
    assert all(answered[k] for k in range(7, 21))


@pytest.mark.slow
def test_the_sampler_killed_mid_generate_and_restarted_gets_the_current_weights_first(stack, world_dir, tmp_path, arun):
    sampler = ServerProcess("sampler", sampler_config(tmp_path)).start()
    versions: dict[int, int] = {}

    async def scenario():
        async with stack() as s:
            cfg = s.run_config(world_dir, tmp_path / "run", sampler={"address": f"127.0.0.1:{sampler.port}",
                                                                     "tls": {"insecure": True}, "timeout_s": 60},
                               grpo={"steps": 8, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 16},
                               sampler_wait_s=120, checkpoint_every=100)
            restart = threading.Thread(target=sampler.start)

            def kill_during_the_next_generate():
                time.sleep(0.1)
                sampler.signal(signal.SIGKILL)
                restart.start()

            def on_step(record):
                versions[record.step] = record.policy_version
                if record.step == 3:
                    threading.Thread(target=kill_during_the_next_generate).start()

            result = await MoRRun(cfg, on_step=on_step).run()
            restart.join(60)
            return result

    try:
        result = arun(scenario(), timeout=600)
    finally:
        sampler.kill()

    assert result.steps_done == 8
    assert sampler.starts == 2  # killed once, started again
    steps = read_steps(tmp_path / "run" / "steps.jsonl")
    # every step sampled with the weights of the step before it: the restarted sampler (version 0)
    # got the latest push again before it generated anything
    assert [r.policy_version for r in steps] == list(range(8)) and all(r.staleness == 0 for r in steps)


@pytest.mark.slow
def test_a_node_frozen_past_the_deadline_is_dropped_per_step_and_never_stalls_one(stack, world_dir, rm_checkpoints, tmp_path, arun):
    school = ServerProcess("reward-node", node_config(tmp_path, "school", rm_checkpoints["school"])).start()
    deadline_s = 3.0
    times: dict[int, float] = {}

    async def scenario():
        async with stack() as s:
            nodes = [NodeEndpoint.loopback(n, s.nodes[n].port, 20) for n in ("clinic", "bank")]
            nodes.append(NodeEndpoint.loopback("school", school.port, 20))
            cfg = s.run_config(world_dir, tmp_path / "run", nodes=nodes,
                               grpo={"steps": 8, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
                               fanout={"step_deadline_s": deadline_s, "min_nodes": 2, "health_timeout_s": 1.0},
                               checkpoint_every=100)
            last = [time.monotonic()]

            def on_step(record):
                now = time.monotonic()
                times[record.step] = now - last[0]
                last[0] = now
                if record.step == 2:
                    school.signal(signal.SIGSTOP)  # the process holds its socket and answers nothing
                if record.step == 5:
                    school.signal(signal.SIGCONT)

            return await MoRRun(cfg, on_step=on_step).run()

    try:
        result = arun(scenario(), timeout=600)
    finally:
        school.kill()

    assert result.steps_done == 8
    answered = responded(read_steps(tmp_path / "run" / "steps.jsonl"), "school")
    assert answered[1] and answered[2] and not answered[3] and not answered[4]
    assert all(answered[k] for k in (7, 8))  # thawed after step 5: re-admitted by step 7
    assert max(times[k] for k in (3, 4, 5)) < deadline_s + 10  # a frozen node costs at most its deadline


@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cpu", reason="bit-identical resume is promised on CPU")
def test_the_orchestrator_killed_with_sigkill_resumes_to_bit_identical_parameters(world_dir, rm_checkpoints, tmp_path):
    nodes = {n: ServerProcess("reward-node", node_config(tmp_path, n, rm_checkpoints[n])).start() for n in NODES}

    def run_config(out: Path) -> Path:
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump({
            "seed": 0, "world": str(world_dir), "output_dir": str(out), "torch_threads": 1,
            "policy": {"arch": "qwen2_vl", "preset": "tiny", "seed": 0},
            "nodes": [{"node_id": n, "address": f"127.0.0.1:{p.port}", "tls": {"insecure": True}, "timeout_s": 30}
                      for n, p in nodes.items()],
            "grpo": {"steps": 6, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4, "lr": 5e-3},
            "router": {"kind": "mor", "train_steps": 10, "pairs": 12},
            "checkpoint_every": 2,
        }))
        return path

    def orchestrator(cfg: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "orchestrator", "run", "-c", str(cfg), "--quiet", *extra],
                                cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    try:
        whole = orchestrator(run_config(tmp_path / "whole"))
        out_whole = whole.communicate(timeout=600)[0]
        assert whole.returncode == 0, out_whole[-3000:]

        cut = tmp_path / "cut"
        first = orchestrator(run_config(cut))
        steps_file = cut / "steps.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # SIGKILL once step 3 is recorded (a checkpoint exists at step 2)
            if steps_file.exists() and len(steps_file.read_text().splitlines()) >= 3:
                break
            assert first.poll() is None, first.stdout.read()[-3000:]
            time.sleep(0.05)
        first.kill()
        first.wait(30)
        out_first = first.stdout.read()
        assert len(steps_file.read_text().splitlines()) < 6  # it really died mid-run

        resumed = orchestrator(run_config(cut), "--resume")
        out_resumed = resumed.communicate(timeout=600)[0]
        assert resumed.returncode == 0, out_resumed[-3000:]
    finally:
        for p in nodes.values():
            p.kill()

    # Step by step first, so that a mismatch names the step and the quantity that parted first.
    def trace(run_dir: Path) -> list[dict]:  # repr: NaN (a node that did not answer) equals itself
        return [{"step": r.step, "reward": repr(r.reward_mean), "loss": repr(r.loss), "kl": repr(r.kl),
                 "nodes": [(n.node_id, n.responded, n.error_code, repr(n.score_mean)) for n in r.nodes]}
                for r in read_steps(run_dir / "steps.jsonl")]

    whole_steps, cut_steps = trace(tmp_path / "whole"), trace(cut)
    assert [r["step"] for r in cut_steps] == list(range(1, 7))
    routers = [[line for line in out.splitlines() if "router:" in line] for out in (out_whole, out_first)]
    for w, c in zip(whole_steps, cut_steps, strict=True):
        assert w == c, f"step {w['step']}: uninterrupted {w} != resumed {c}; routers fitted {routers}"
    a = load_file(next((tmp_path / "whole").rglob("policy/*.safetensors")))
    b = load_file(next(cut.rglob("policy/*.safetensors")))
    assert a.keys() == b.keys()
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, largest {max(differ.values()):.3e}"
