"""experiments/mor_table.py: the quick profile end to end (real reward nodes, real GRPO runs), and the
planning and summary maths on hand-made inputs."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.pipeline.table import summary as sm
from services.pipeline.table.driver import plan
from services.pipeline.table.prepare import general_world, noisy_world
from services.pipeline.table.profiles import method, quick
from services.pipeline.table.report import PLOTS, cell

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """The quick profile, run as a user runs it (one process, the script's own command line)."""
    root = tmp_path_factory.mktemp("mor-table")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "experiments/mor_table.py", "--profile", "quick", "--out", str(root / "out"),
                           "--work", str(root / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["profile"] == "quick"
    out = root / "out"
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_quick_profile_writes_json_markdown_and_valid_pngs(table):
    out, results, md = table

    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(out / f"{name}.png") as im:
            im.verify()
        assert f"![{name}]({name}.png)" in md
    assert results["command"].startswith("python experiments/mor_table.py --profile quick")
    assert results["timing"]["total"] > 0


def test_every_method_has_a_row_with_finite_numbers(table):
    _, results, _ = table
    p = quick()
    rows = results["summary"]["main"]["methods"]

    assert results["summary"]["main"]["order"] == list(p.methods) and set(rows) == set(p.methods)
    for m, row in rows.items():
        agg = row["agg"]
        names = [k for k in agg if k.startswith(("acc:", "em:", "format:", "pref:"))] + ["acc_mean", "pref_mean"]
        assert {"acc:charts", "acc:digits", "acc:shapes", "pref:clinic", "pref:bank", "pref:school", "pref:lab"} <= set(agg)
        assert all(math.isfinite(agg[k]["mean"]) and math.isfinite(agg[k]["std"]) for k in names)
        if method(m).trains:
            assert math.isfinite(agg["reward_last"]["mean"]) and math.isfinite(agg["kl_last"]["mean"])
    for m in p.methods:
        job = results["jobs"][f"main/{m}/s0"]
        if method(m).trains:  # every RL method got the same GRPO budget
            assert job["curves"]["step"] == list(range(1, p.grpo["steps"] + 1))


def test_markdown_main_table_is_rendered_from_the_json(table):
    _, results, md = table
    rows = {m: results["summary"]["main"]["methods"][m] for m in results["summary"]["main"]["order"]}
    lines = md.split("## Main table")[1].split("##")[0].strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]

    assert len(body) == len(rows)
    key = {"acc mean": "acc_mean", "pref mean": "pref_mean", "reward": "reward_last", "KL": "kl_last"}
    for (_m, row), cells in zip(rows.items(), body, strict=True):
        assert cells[0] == row["label"]
        for col, text in zip(head[1:], cells[1:], strict=True):
            name = key.get(col) or re.sub(r"^(acc|pref) (\w+).*$", r"\1:\2", col)
            assert text == cell(row["agg"][name], 4 if col == "KL" else 3), (row["label"], col)


def test_claim_sections_hold_their_numbers(table):
    _, results, md = table
    s = results["summary"]

    gen = s["generalisation"]
    assert gen["benchmark"] == "charts" and gen["covered"] == ["digits", "shapes"]
    assert set(gen["methods"]) == {"sft", "mor"}
    assert results["jobs"]["general/mor/s0"]["rm_accuracy"].keys() == {"clinic", "school"}  # no charts expert
    rob = s["robustness"]
    assert rob["levels"] == [0.0, 0.4] and set(rob["methods"]["mor"]["levels"]) == {"0.0", "0.4"}
    w = rob["methods"]["mor"]["noisy_weight"]
    assert set(w) == {"0.0", "0.4"} and all(0.0 <= w[x][k]["mean"] <= 1.0 for x in w for k in ("all", "home"))
    assert "Router weight on bank" in md
    ad = s["adaptability"]
    assert ad["client"] == "bank" and ad["others"] == ["clinic", "school"] and ad["benchmark"] == "charts"
    assert ad["n"] == 1 and 0.0 <= ad["seeds"]["0"]["domain_acc_end"] <= 1.0
    assert "the `charts` expert, joins mid-run" in md
    assert "Generalisation" in md and "Robustness" in md and "adaptability" in md


def test_the_uncovered_benchmarks_expert_joins_the_adaptability_run_only(table):
    _, results, _ = table
    join, control = results["jobs"]["adapt/mor/s0"], results["jobs"]["adapt_control/mor/s0"]
    step = quick().claims.adapt_join_step

    # Both runs are in the generalisation world (no charts expert); bank, the charts expert, joins one.
    assert join["job"]["world"] == control["job"]["world"] == "general"
    weights = join["curves"]["weights"]
    assert weights["bank"][:step] == [0.0] * step and all(w > 0 for w in weights["bank"][step:])
    assert set(control["curves"]["weights"]) == {"clinic", "school"}
    assert [t["step"] for t in join["track"]] == list(range(0, quick().claims.adapt_steps + 1))
    assert "bank" in join["track"][0]["client_preference"]  # the joiner's preference is measured from step 0
    assert join["router_domains"] and set(next(iter(join["router_domains"].values()))) == {"clinic", "bank", "school"}
    # It serves the RM it serves in the main table: the same checkpoint, not one trained on the general world.
    assert join["rm_accuracy"]["bank"] == results["jobs"]["main/single:bank/s0"]["rm_accuracy"]["bank"]


def test_plan_adds_zero_noise_rows_and_never_repeats_a_job():
    p = quick()

    jobs = plan(p, "bank")

    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    assert {f"main/{m}/s{s}" for m in p.claims.noise_methods for s in p.claims.noise_seeds} <= set(keys)
    assert [j.scenario for j in jobs[:2]] == ["adapt", "adapt_control"] and jobs[0].join == "bank"
    assert {j.world for j in jobs[:2]} == {"general"} and jobs[1].join is None
    assert plan(p, None)[0].scenario == "main"  # no joiner: no adaptability jobs


def test_verifiable_row_runs_in_a_world_with_references_and_the_same_client_data(table, tmp_path):
    from services.common.data.world import load_world
    from services.common.data.world_writer import make_world
    from services.pipeline.table.prepare import scenario_worlds
    from services.reward_node.data import load_node_data

    p = quick()
    worlds = scenario_worlds(p)
    _, results, _ = table
    mor_rules = [j for j in plan(p, None) if j.method == "mor_rules"]

    assert worlds["main"].pool_reference_share == 0.0 and worlds["verifiable"].pool_reference_share == 1.0
    assert mor_rules and {j.world for j in mor_rules} == {"verifiable"} and {j.scenario for j in mor_rules} == {"main"}
    main, ver = (make_world(worlds[n], tmp_path / n, progress=False).parent for n in ("main", "verifiable"))
    assert all(not q.answers for q in load_world(main).prompt_pool())
    assert all(q.answers for q in load_world(ver).prompt_pool())
    # Same client files: the verifiable row is served by the very RMs of the other rows.
    assert all(load_node_data(main, c).data_sha256 == load_node_data(ver, c).data_sha256 for c in ("clinic", "bank"))
    assert results["summary"]["main"]["methods"]["mor_rules"]["agg"]["acc_mean"]["mean"] >= 0


def test_reward_weights_of_each_row_follow_its_method(tmp_path):
    from services.common.config import NodeEndpoint
    from services.pipeline.table.jobs import JobInputs, RunJob, run_config
    from services.pipeline.table.prepare import Workspace

    p = quick()
    node = [NodeEndpoint(node_id="bank", address="127.0.0.1:1")]

    def hybrid(m: str) -> dict:
        job = RunJob("main", method(m).world, m, 0, 2)
        return run_config(JobInputs(job, p, Workspace(tmp_path)), node, tmp_path / m).hybrid.model_dump()

    assert hybrid("mor")["rm_weight"] == 1.0 and hybrid("mor")["accuracy_weight"] == 0.0
    assert hybrid("mor_rules")["rm_weight"] == 1.0 and hybrid("mor_rules")["accuracy_weight"] == p.verifiable_accuracy_weight
    # The RL ceiling: the same exact-match reward with the RMs weighed 0, in the world with references.
    ceiling = hybrid("verifiable")
    assert ceiling["rm_weight"] == 0.0 and ceiling["accuracy_weight"] == p.verifiable_accuracy_weight
    assert method("verifiable").world == "verifiable"
    assert hybrid("mor_norules")["format_weight"] == 0.0


def test_oracle_homes_are_each_benchmarks_expert():
    from types import SimpleNamespace

    from services.pipeline.table.jobs import home_nodes

    cfg = quick().world
    world = SimpleNamespace(benchmarks=sorted(cfg.benchmarks), clients={c.name: c for c in cfg.all_clients()})
    general = general_world(cfg, "charts")
    gen_world = SimpleNamespace(benchmarks=sorted(general.benchmarks), clients={c.name: c for c in general.all_clients()})

    assert home_nodes(world, ["clinic", "bank", "school"]) == {"shapes": "clinic", "charts": "bank", "digits": "school"}
    assert home_nodes(world, ["clinic", "school"])["charts"] in {"clinic", "school"}
    assert "charts" not in home_nodes(gen_world, ["clinic", "school"])
    assert home_nodes(gen_world, ["clinic", "bank", "school"])["charts"] == "bank"  # once the expert has joined


def test_claim_worlds_change_only_what_the_claim_needs():
    base = quick().world

    gen = general_world(base, "charts")
    noisy = noisy_world(base, "bank", 0.2)

    assert all("charts" not in c.domain_mix for c in gen.clients) and set(gen.benchmarks) == set(base.benchmarks)
    assert [c.name for c in gen.clients] == ["clinic", "school"]  # bank, the charts expert, is not in it
    assert gen.held_out_client == next(c for c in base.clients if c.name == "bank")  # it may join (adaptability)
    assert {c.name: c.label_noise for c in noisy.clients} == {"clinic": 0.0, "bank": 0.2, "school": 0.0}
    with pytest.raises(ValueError, match="noise_client"):
        noisy_world(base, "nobody", 0.2)


def test_paired_verdicts_and_first_improvement():
    a = {0: {"x": 0.5}, 1: {"x": 0.6}, 2: {"x": 0.7}}
    b = {0: {"x": 0.3}, 1: {"x": 0.41}, 2: {"x": 0.49}}
    track = [{"step": s, "client_preference": {"lab": v}} for s, v in [(0, 0.2), (2, 0.2), (4, 0.205), (6, 0.3)]]

    assert sm.paired(a, b, "x")["verdict"] == "better"
    assert sm.paired(b, a, "x")["verdict"] == "worse"
    assert sm.paired({0: {"x": 1.0}}, {0: {"x": 0.0}}, "x")["verdict"] == "one seed"
    assert sm.first_improvement(track, "lab", after=2, margin=0.01) == 4
    assert sm.first_improvement(track, "lab", after=6, margin=0.01) is None


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: sft, central"):
        method("median")
    assert method("single:bank").rms == "client:bank"
