"""worker.check_run: what a run must be to train over a torchrun world, refused on rank 0 at start-up
(no process group needed: the context is plain data)."""
from __future__ import annotations

import pytest
import torch

from services.common.config import ConfigError, RunConfig
from services.orchestrator.parallel import ParallelContext, launched_world_size
from services.orchestrator.worker import check_run

CPU2 = ParallelContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
SAMPLER = {"address": "127.0.0.1:50051", "tls": {"insecure": True}}


def test_fsdp_with_the_in_process_sampler_is_refused():
    with pytest.raises(ConfigError, match="fsdp needs a remote sampler"):
        check_run(RunConfig(distributed={"strategy": "fsdp"}), CPU2)


def test_ddp_may_sample_in_process_and_fsdp_with_a_remote_sampler_passes():
    check_run(RunConfig(distributed={"strategy": "ddp"}), CPU2)
    check_run(RunConfig(sampler=SAMPLER), CPU2)


def test_fewer_completions_than_processes_are_refused():
    cfg = RunConfig(sampler=SAMPLER, grpo={"prompts_per_step": 1, "group_size": 2})
    wide = ParallelContext(rank=0, world_size=4, local_rank=0, device=torch.device("cpu"), backend="gloo")

    with pytest.raises(ConfigError, match="2 completions cannot be split over 4 processes"):
        check_run(cfg, wide)


def test_a_run_on_another_device_type_than_the_group_is_refused():
    with pytest.raises(ConfigError, match="device: cuda, but the trainer's processes run on cpu"):
        check_run(RunConfig(sampler=SAMPLER, device="cuda"), CPU2)


def test_without_torchrun_the_world_is_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert launched_world_size() == 3
