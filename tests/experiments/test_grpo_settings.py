"""experiments/grpo_settings.py: its arms' profiles, the change-against-start maths and its CLI errors
(the arms themselves need the full table's artefacts; see the script's docstring)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import grpo_settings as gs  # noqa: E402

from services.pipeline.table.profiles import full  # noqa: E402


def test_an_arm_overrides_the_old_base_not_todays_full_profile():
    p = gs.arm_profile(full(), {"lr": 3e-4}, {"rm_weight": 0.0})

    assert p.grpo == {**gs.BASE_GRPO, "lr": 3e-4}
    assert p.methods == gs.BASE_METHODS
    assert p.hybrid["rm_weight"] == 0.0 and p.hybrid["format_weight"] == full().hybrid["format_weight"]
    assert set(r for _, rewards, _ in gs.ARMS.values() for r in rewards) <= set(gs.REWARDS)


def test_change_is_the_mean_difference_with_its_standard_error_over_seeds():
    start = {"acc_mean": 0.5}

    two = gs.change([{"acc_mean": 0.52}, {"acc_mean": 0.50}], start)["acc_mean"]
    one = gs.change([{"acc_mean": 0.47}], start)["acc_mean"]

    assert two["mean"] == pytest.approx(0.01) and two["se"] == pytest.approx(0.01)
    assert one["mean"] == pytest.approx(-0.03) and math.isnan(one["se"])


@pytest.mark.parametrize("args, message", [
    (["--arms", "nope"], "unknown arm(s) nope"),
    (["--table-work", "{tmp}/missing"], "has no worlds, sft, rm"),
])
def test_bad_arguments_get_one_clear_line(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "experiments/grpo_settings.py", "--work", str(tmp_path / "w"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr
