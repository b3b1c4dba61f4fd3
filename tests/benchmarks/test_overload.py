"""benchmarks/overload.py runs end to end on a tiny budget (a node in a child process, capacity,
then 10x capacity) and ends with its JSON headline."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overload.py"


@pytest.mark.slow
def test_quick_run_prints_its_headline_last():
    pin = len(os.sched_getaffinity(0)) >= 2  # the node on one CPU, the load generator on the rest
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--unloaded-s", "1", "--capacity-s", "2", "--concurrency", "4,16",
                           "--overload-s", "3", "--max-concurrent-rpcs", "16", *(["--pin"] if pin else [])],
                          capture_output=True, text=True, timeout=240)

    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    assert head["bench"] == "overload"
    assert head["pinned"] is pin and head["max_concurrent_rpcs"] == 16
    for key in ("goodput_ratio", "admitted_p99_ms", "unloaded_p99_ms", "rss_growth_mb", "capacity_ok_per_s"):
        assert math.isfinite(head[key]), key
    assert head["capacity_ok_per_s"] > 0 and head["goodput_ratio"] > 0
    assert head["overload_codes"].get("RESOURCE_EXHAUSTED", 0) > 0  # 10x capacity is shed, not queued
    assert "INTERNAL" not in head["overload_codes"] and "UNKNOWN" not in head["overload_codes"]
