"""The GRPO trainer in 2 processes (torchrun, gloo, 127.0.0.1) trains like 1 process on the same rollouts.

One torchrun launch runs every 2-process job of the module (FSDP2 and DDP, each loss type, full
fine-tuning, an adaptive beta, a resume from a 1-process state); the 1-process jobs run here, through
the same replay code. Tolerance: after 3 steps (lr 1e-2, AdamW) every trained parameter agrees within
TOL = 5e-5 in absolute value. The differences are float32 summation order (which rank adds which
rows' gradient, all-reduce vs local sum), grown by AdamW where a gradient component is near its eps
(an update is lr * g / (|g| + eps)): measured on this tiny Qwen2-VL the largest is 1-4e-6 for most
jobs and up to 1.3e-5 for DDP dr_grpo (its constant normaliser makes the smallest gradients),
depending on the CPU's kernels. Parameters move by 3e-3 (full fine-tuning, lr 1e-3) to 3e-2 (LoRA B)
in those steps, at least MOVED = 20 * TOL, so a wrong normaliser (e.g. a rank's local token count, or
a missing world-size factor) misses TOL by orders of magnitude.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm
from services.orchestrator.grpo import RolloutBatch, group_advantages
from services.orchestrator.grpo.replay import ReplayJob, ReplaySpec, run_job

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TOL = 5e-5
MOVED = 20 * TOL
G = 3
MAX_NEW = 6
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
POLICY = ModelConfig(arch="qwen2_vl", preset="tiny", seed=0)
QUESTIONS = ["What colour is the shape?", "How many circles are there?", "Which bar is the tallest?"]
ROOT = Path(__file__).resolve().parents[2]


def _grpo(**over) -> dict:
    return dict(group_size=G, prompts_per_step=len(QUESTIONS), max_new_tokens=MAX_NEW, lr=1e-2, lora_rank=4,
                lora_alpha=8.0, beta=0.04) | over


# micro_batch_size 3 over 9 rows cuts the one-process micro-batches [0:3] [3:6] [6:9]; the ranks hold
# rows [0:4] and [4:9], so [3:6] straddles them (bnpo's per-micro-batch normaliser) and rank 0 has one
# micro-batch fewer (the padding forward). micro_batch_size 0 (DDP jobs) splits the whole batch in two.
TWO_PROCESS_JOBS = (
    [ReplayJob(name=f"fsdp-{lt}", grpo=_grpo(loss_type=lt, micro_batch_size=3), strategy="fsdp", save_after=[2])
     for lt in LOSS_TYPES]
    + [ReplayJob(name=f"ddp-{lt}", grpo=_grpo(loss_type=lt, micro_batch_size=0), strategy="ddp") for lt in LOSS_TYPES]
    + [ReplayJob(name="fsdp-full", grpo=_grpo(loss_type="dapo", micro_batch_size=3, lora=False, lr=1e-3),
                 strategy="fsdp")]
    # grpo.target_kl: each step adapts beta on every rank; the checkpoint keeps rank 0's
    + [ReplayJob(name="fsdp-target-kl", grpo=_grpo(micro_batch_size=3, target_kl=1.0, kl_horizon=1),
                 strategy="fsdp", save_after=[2])]
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rollouts() -> RolloutBatch:
    vlm = build_vlm(POLICY)
    images = [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 60, 220)), None]
    out = vlm.generate(QUESTIONS, images, num_return_sequences=G, max_new_tokens=MAX_NEW, seed=1)
    flat = [g for group in out for g in group]
    keep = [MAX_NEW - (i % 3) for i in range(len(flat))]  # unequal lengths: token normalisers differ
    return RolloutBatch(
        questions=[q for q in QUESTIONS for _ in range(G)],
        images=[im for im in images for _ in range(G)],
        completion_ids=[g.token_ids[:k] for g, k in zip(flat, keep, strict=True)],
        old_logprobs=[g.logprobs[:k] for g, k in zip(flat, keep, strict=True)],
        advantages=group_advantages(torch.tensor([0.0, 1.0, 2.0, 1.0, 3.0, 1.0, 5.0, 0.0, 2.0]), G),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """DIR/one/<job> (1 process) and DIR/two/<job> (2 processes) after 3 steps, plus the resumes."""
    d = tmp_path_factory.mktemp("dist")
    before = torch.get_num_threads()
    # One thread from the rollouts on: the sampled rollouts (and so the case under test) must not
    # depend on the thread count the tests before this one left behind.
    torch.set_num_threads(1)
    try:
        (d / "rollouts.pkl").write_bytes(pickle.dumps([_rollouts()]))
        one = ReplaySpec(policy=POLICY, rollouts=d / "rollouts.pkl", jobs=TWO_PROCESS_JOBS)
        batches = pickle.loads((d / "rollouts.pkl").read_bytes())
        for job in one.jobs:  # every job here saves after step 1 too: the state the 2-process resume reads
            run_job(one, job.model_copy(update={"save_after": [1, 2]}), batches, d / "one")
        resume = ReplayJob(name="resume-from-one", grpo=_grpo(loss_type="bnpo", micro_batch_size=3),
                           strategy="fsdp", resume_from=d / "one" / "fsdp-bnpo" / "state-1.pt")
        two = one.model_copy(update={"jobs": [*TWO_PROCESS_JOBS, resume]})
        (d / "spec.json").write_text(two.model_dump_json())
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "services.orchestrator.grpo.replay",
               "--spec", str(d / "spec.json"), "--out", str(d / "two")]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        # Back again: 1 process resumes from the 2-process state after step 2.
        back = ReplayJob(name="resume-from-two", grpo=_grpo(loss_type="dapo", micro_batch_size=3),
                         resume_from=d / "two" / "fsdp-dapo" / "state-2.pt")
        run_job(one, back, batches, d / "one")
    finally:
        torch.set_num_threads(before)
    return d


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "params.pt", weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b) and a
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.fixture(scope="module")
def initial() -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in build_vlm(POLICY).model.named_parameters()}


@pytest.mark.parametrize("job", [j.name for j in TWO_PROCESS_JOBS])
def test_two_processes_give_the_one_process_parameters(runs, job):
    one, two = _params(runs / "one" / job), _params(runs / "two" / job)

    diff = _max_diff(one, two)

    assert diff <= TOL, f"{job}: 2-process parameters differ by {diff:.2e} (> {TOL})"
    moved = max(float(p.abs().max()) for n, p in one.items() if "lora_B" in n) if "full" not in job else None
    if moved is not None:  # lora_B starts at 0: how far the 3 steps moved it, against the tolerance
        assert moved > MOVED


def test_full_fine_tuning_moves_the_vision_tower_alike(runs, initial):
    one, two = _params(runs / "one" / "fsdp-full"), _params(runs / "two" / "fsdp-full")
    key = next(n for n in one if ".visual." in n and n.endswith("weight"))
    start = initial[key.replace("base_model.model.", "")]

    # The vision tower is replicated outside FSDP and its gradient all-reduced: it must train alike.
    assert float((one[key] - start).abs().max()) > MOVED
    assert float((one[key] - two[key]).abs().max()) <= TOL


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_rank_zero_reports_the_whole_batch_statistics(runs, loss_type):
    one = json.loads((runs / "one" / f"fsdp-{loss_type}" / "stats.json").read_text())["steps"]
    two = json.loads((runs / "two" / f"fsdp-{loss_type}" / "stats.json").read_text())
    assert two["world_size"] == 2

    for a, b in zip(one, two["steps"], strict=True):
        for key in ("loss", "kl", "ratio_mean", "grad_norm", "clip_low", "clip_high"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (key, a["step"])
    assert one[-1]["kl"] > 0  # the policy left the reference: the statistics are not trivially 0


def test_an_adapted_kl_coefficient_moves_alike_in_two_processes(runs):
    job = "fsdp-target-kl"
    one = [s["beta"] for s in json.loads((runs / "one" / job / "stats.json").read_text())["steps"]]
    two = [s["beta"] for s in json.loads((runs / "two" / job / "stats.json").read_text())["steps"]]
    saved = [torch.load(runs / d / job / "state-2.pt", weights_only=False)["beta"] for d in ("one", "two")]

    # KL far below the target: every step lowers beta by the controller's clip (20 % at horizon 1)
    assert one == pytest.approx([0.04, 0.032, 0.0256]) and two == pytest.approx(one)
    assert saved == pytest.approx([one[2], one[2]])  # state after step 2: the beta step 3 trains with


def test_a_two_process_checkpoint_has_the_one_process_layout(runs):
    one = torch.load(runs / "one" / "fsdp-dapo" / "state-2.pt", weights_only=False)
    two = torch.load(runs / "two" / "fsdp-dapo" / "state-2.pt", weights_only=False)

    assert {n: tuple(t.shape) for n, t in two["params"].items()} == {n: tuple(t.shape) for n, t in one["params"].items()}
    assert sorted(two["optimizer"]["state"]) == sorted(one["optimizer"]["state"])
    for i, s in one["optimizer"]["state"].items():
        assert float((s["exp_avg_sq"] - two["optimizer"]["state"][i]["exp_avg_sq"]).abs().max()) <= TOL
    assert two["steps_done"] == one["steps_done"] == 2


def test_one_process_resumes_a_two_process_checkpoint(runs):
    resumed, straight = _params(runs / "one" / "resume-from-two"), _params(runs / "one" / "fsdp-dapo")

    assert _max_diff(resumed, straight) <= TOL


def test_two_processes_resume_a_one_process_checkpoint(runs):
    resumed, straight = _params(runs / "two" / "resume-from-one"), _params(runs / "one" / "fsdp-bnpo")

    assert _max_diff(resumed, straight) <= TOL
    # and it did train the two remaining steps: not just the state it was given
    after_one = torch.load(runs / "one" / "fsdp-bnpo" / "state-1.pt", weights_only=False)["params"]
    assert _max_diff(resumed, after_one) > MOVED
