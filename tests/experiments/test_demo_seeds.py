"""experiments/demo_seeds.py on a quick demo workdir: one real MoR run per seed, paired comparison with the start."""
from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import ROOT, script

_spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "experiments" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_seeds)

TINY = ["--set", "grpo.steps=2", "--set", "grpo.prompts_per_step=2", "--set", "grpo.group_size=2",
        "--set", "router.train_steps=5", "--examples", "6"]


@pytest.mark.slow
def test_each_seed_runs_and_is_compared_with_the_start_on_the_same_examples(demo_workdir, tmp_path):
    out = tmp_path / "seeds"

    proc = script("demo_seeds.py", "--workdir", str(demo_workdir), "--out", str(out), "--seeds", "0", "3",
                  *TINY, "--set", "hybrid.rm_weight=0.5")

    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["run_config"]["hybrid"]["rm_weight"] == 0.5 and results["run_config"]["grpo"]["steps"] == 2
    assert set(results["seeds"]) == {"0", "3"}
    for seed, r in results["seeds"].items():
        config = json.loads((out / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == int(seed) and config["hybrid"]["rm_weight"] == 0.5
        assert len((out / f"seed{seed}" / "steps.jsonl").read_text().splitlines()) == 2
        for b, p in r["paired"].items():
            assert p["turned_right"] - p["turned_wrong"] == round(6 * (r["exact_match"][b] - results["start"][b]))
    assert set(results["summary"]) == {*results["start"], "all"}
    assert "mean ± se" in proc.stdout and "hybrid.rm_weight=0.5" in proc.stdout


def test_the_summary_is_the_mean_and_standard_error_over_seeds_per_benchmark_and_overall():
    def seed(em_a, em_b, pref_a, pref_b):
        return {"exact_match": {"a": em_a, "b": em_b},
                "paired": {"a": {"preference_change": pref_a}, "b": {"preference_change": pref_b}}}
    results = {"start": {"a": 0.5, "b": 0.2}, "seeds": {"0": seed(0.6, 0.2, 0.1, 0.0), "1": seed(0.5, 0.4, 0.3, 0.2)}}

    s = demo_seeds.summary(results, ["a", "b"])

    assert s["a"]["exact_match"] == pytest.approx({"mean": 0.05, "se": 0.05})  # changes +0.1, 0.0
    assert s["b"]["exact_match"] == pytest.approx({"mean": 0.1, "se": 0.1})  # 0.0, +0.2
    assert s["all"]["exact_match"] == pytest.approx({"mean": 0.075, "se": 0.025})  # per seed 0.05, 0.1
    assert s["all"]["preference"] == pytest.approx({"mean": 0.15, "se": 0.1})  # per seed 0.05, 0.25
    one = demo_seeds.summary({"start": results["start"], "seeds": {"0": results["seeds"]["0"]}}, ["a", "b"])
    assert one["a"]["exact_match"] == pytest.approx({"mean": 0.1, "se": 0.0})


@pytest.mark.parametrize(("override", "message"), [
    ("grpo.nope=1", "grpo.nope"),
    ("grpo", "expected section.field=value"),
    ("nosection.lr=1", "no section 'nosection'"),
    ("grpo.lr=-1", "grpo.lr"),
])
def test_a_bad_override_is_a_clear_error_before_any_run(demo_workdir, tmp_path, override, message):
    proc = script("demo_seeds.py", "--workdir", str(demo_workdir), "--out", str(tmp_path), "--set", override)

    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_a_workdir_without_a_demo_is_named(tmp_path):
    proc = script("demo_seeds.py", "--workdir", str(tmp_path))

    assert proc.returncode != 0 and "run `make demo` first" in proc.stderr
