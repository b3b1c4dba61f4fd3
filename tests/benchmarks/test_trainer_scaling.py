"""benchmarks/trainer_scaling.py --quick runs 1 process and 2 processes (torchrun, gloo) on the same
rollouts and ends with its JSON headline: step times, the ratio and the collectives' share."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "trainer_scaling.py"


@pytest.mark.slow
def test_quick_profile_prints_its_headline_last():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--steps", "2"],
                          capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    assert head["bench"] == "trainer_scaling" and head["nproc"] == 2 and head["preset"] == "tiny"
    for key in ("one_process_step_s", "one_process_1thread_step_s", "dist2_step_s", "dist2_vs_one"):
        assert math.isfinite(head[key]) and head[key] > 0, key
    assert head["dist2_vs_one"] == pytest.approx(head["dist2_step_s"] / head["one_process_step_s"], rel=0.02)
    assert 0 < head["allreduce_share"] < 1  # the profiler saw collectives, and they are not the whole step
