"""experiments/adaptability.py on the quick profile: the uncovered benchmark's expert joins one real
MoR run (real reward nodes over gRPC, real GRPO steps), not its control; the summary and the plot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.pipeline.table.profiles import quick
from tests.experiments.conftest import script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def adapt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("adapt")
    proc = script("adaptability.py", "--profile", "quick", "--out", str(root / "out"), "--work", str(root / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out", json.loads((root / "out" / "adaptability.json").read_text()), proc.stdout


def test_the_charts_expert_joins_the_generalisation_world_mid_run(adapt):
    _, doc, _ = adapt
    step = quick().claims.adapt_join_step
    join, control = doc["jobs"]["adapt/mor/s0"], doc["jobs"]["adapt_control/mor/s0"]

    assert doc["summary"]["client"] == "bank" and doc["summary"]["benchmark"] == "charts"
    assert doc["summary"]["others"] == ["clinic", "school"]
    # No weight before it joins, some after; the control never serves it.
    assert join["weights"]["bank"][:step] == [0.0] * step and all(w > 0 for w in join["weights"]["bank"][step:])
    assert set(control["weights"]) == {"clinic", "school"}
    # The joiner serves its main-world RM; the others their generalisation-world RMs (no charts data).
    assert {(r["node_id"], r["world"]) for r in doc["reward_models"]} == {("clinic", "general"), ("school", "general"),
                                                                          ("bank", "main")}
    # Both runs are evaluated at the same steps, the joiner's preference among the clients from step 0.
    assert [t["step"] for t in join["track"]] == [t["step"] for t in control["track"]]
    assert "bank" in control["track"][0]["client_preference"]


def test_summary_differences_are_joined_minus_control_and_the_plot_is_a_png(adapt):
    out, doc, stdout = adapt
    s = doc["summary"]
    seed = s["seeds"]["0"]

    assert s["client_gain_vs_control"]["mean"] == pytest.approx(seed["client_end"] - seed["client_end_control"])
    assert s["domain_acc_gain_vs_control"]["mean"] == pytest.approx(seed["domain_acc_end"] - seed["domain_acc_end_control"])
    # End values are the final evaluation's (more examples than the in-run track), at-join the track's.
    assert seed["domain_acc_end"] == doc["jobs"]["adapt/mor/s0"]["eval"]["benchmarks"]["charts"]["vqa_accuracy"]
    assert seed["client_at_join"] == doc["jobs"]["adapt/mor/s0"]["track"][quick().claims.adapt_join_step][
        "client_preference"]["bank"]
    assert (out / "adaptability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bank (the charts expert) joins after step" in stdout and "joined minus control, charts accuracy" in stdout


def test_bad_workers_get_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/adaptability.py", "--out", str(tmp_path), "--workers", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2 and "--workers must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
