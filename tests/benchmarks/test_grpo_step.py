"""benchmarks/grpo_step.py --quick runs end to end (TRL, MoR over gRPC, MoR with overlap) and ends
with its JSON headline: every mode measured, ratios and per-phase times positive."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grpo_step.py"


@pytest.mark.slow
def test_quick_profile_prints_its_headline_last():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--steps", "2"],
                          capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    assert head["bench"] == "grpo_step" and head["preset"] == "tiny"
    for key in ("mor_vs_trl", "mor_overlap_vs_trl", "mor_vs_trl_paired", "mor_overlap_vs_trl_paired",
                "trl_own_step_time_s"):
        assert math.isfinite(head[key]) and head[key] > 0, key
    for mode in ("trl", "mor", "mor_overlap"):
        assert head[f"{mode}_steps_measured"] == 2
        for phase in ("generate", "score", "train", "total", "compute", "generate_compute", "score_compute",
                      "train_compute"):
            assert head[f"{mode}_{phase}_s"] > 0, (mode, phase)
        assert head[f"{mode}_overhead_s"] == pytest.approx(head[f"{mode}_total_s"] - head[f"{mode}_compute_s"], abs=0.2)
        assert head[f"{mode}_completion_tokens"] > 0
    assert head["mor_sync_s"] > 0 and head["trl_sync_s"] == 0  # MoR pushes LoRA weights; TRL generates in place
