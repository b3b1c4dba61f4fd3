"""experiments/rm_grounding.py on a quick demo workdir: per question type, counts that add up."""
from __future__ import annotations

import json

from services.common.data.world import load_world

from .conftest import script


def test_the_script_reports_each_question_type_and_the_home_correctness_pairs(demo_workdir, tmp_path):
    out = tmp_path / "clinic.json"
    done = script("rm_grounding.py", "--world", str(demo_workdir / "world"), "--client", "clinic", "--epochs", "1",
                  "--classify-epochs", "2", "--eval-examples", "24", "--extra-labelled", "8", "--arch", '{"hidden": 32}', "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]

    result = json.loads(out.read_text())
    world = load_world(demo_workdir / "world")
    assert result["home"] == "shapes" and result["arch"] == {"hidden": 32}
    assert result["labelled"] == len(world.labelled("clinic")) + 8
    by_type = {q: v for q, v in result["candidate_accuracy"].items() if q != "all"}
    assert set(by_type) <= {"count", "colour_of_shape", "shape_of_colour", "left_of"}
    assert sum(v["n"] for v in by_type.values()) == result["candidate_accuracy"]["all"]["n"] == 24
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in result["candidate_accuracy"].values())
    pairs = [p for p in world.pairs("clinic", "test") if p.kind == "correctness" and p.benchmark == "shapes"]
    assert result["home_correctness_pairs"]["n"] == len(pairs)
    assert len(result["loss_per_epoch"]) == 1 and len(result["classify_loss_per_epoch"]) == 2
