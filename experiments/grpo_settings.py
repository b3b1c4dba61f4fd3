"""Which GRPO settings let RL move the table's SFT start at all, and with which reward?

    python experiments/mor_table.py --profile full --out experiments/results     # builds the artefacts
    python experiments/grpo_settings.py --out experiments/results/grpo_settings.json

Every arm starts from the table's SFT start and is served by the table's reward models (the
``--table-work`` folder of `mor_table.py`, linked into ``--work``, never rebuilt here). An arm is a
GRPO setting (overrides of the old full-profile GRPO, LoRA at lr 1e-3 for 30 steps of 8 prompts) and
a reward: ``oracle`` (each benchmark's home expert), ``mean`` (all client RMs averaged) or
``exact`` (the exact-match rule alone, RM weight 0, in the world whose pool has references: the
best any RM reward could hope for). Reported per arm: held-out VQA accuracy and the training
clients' mean true preference, each seed's change against the SFT start, and the mean change with
its standard error over seeds. Runs are cached under ``--work`` like the table's (an interrupted
study resumes; a finished arm is not run again).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.pipeline.table.driver import _pool_map, inputs_for  # noqa: E402
from services.pipeline.table.jobs import JobInputs, RunJob, run_job  # noqa: E402
from services.pipeline.table.prepare import Workspace, prepare_rm  # noqa: E402
from services.pipeline.table.profiles import Profile, method, profile  # noqa: E402

# The full profile's GRPO and methods before this study changed them: the arms' base, kept so that
# their cached runs stay valid whatever the full profile says today.
BASE_GRPO = {"steps": 30, "prompts_per_step": 8, "group_size": 8, "lr": 1e-3, "beta": 0.04, "temperature": 0.3,
             "scale_rewards": "batch"}
BASE_METHODS = ("sft", "central", "fedavg", "single:clinic", "single:bank", "single:school",
                "mean", "min", "static", "oracle", "mor", "mor_rules")
BIG = {"lr": 3e-4, "steps": 60, "prompts_per_step": 16}
FULL_FT = {"lr": 5e-5, "steps": 60, "prompts_per_step": 16, "lora": False}
# name -> (GRPO overrides, rewards, seeds)
ARMS: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[int, ...]]] = {
    "lr3e-4": ({"lr": 3e-4}, ("oracle", "mean"), (0, 1)),
    "lr3e-4_t07": ({"lr": 3e-4, "temperature": 0.7}, ("oracle", "mean"), (0, 1)),
    "lr3e-4_dr": ({"lr": 3e-4, "loss_type": "dr_grpo"}, ("oracle", "mean"), (0, 1)),
    "big": (BIG, ("oracle", "mean"), (0, 1)),
    "bigem": (BIG, ("exact",), (0, 1)),
    "bigem_lr1e-3": ({**BIG, "lr": 1e-3}, ("exact",), (0, 1)),
    "bigem_e2": ({**BIG, "epochs": 2}, ("exact",), (0,)),
    "bigem_full": (FULL_FT, ("exact",), (0, 1)),
    "bigfull": (FULL_FT, ("oracle", "mean"), (0,)),
}
# reward -> (table method, hybrid overrides)
REWARDS = {"oracle": ("oracle", {}), "mean": ("mean", {}), "exact": ("mor_rules", {"rm_weight": 0.0})}
LINKED = ("worlds", "sft", "rm", "sft_eval")


def arm_profile(base: Profile, grpo: dict[str, Any], hybrid: dict[str, Any]) -> Profile:
    return dataclasses.replace(base, grpo={**BASE_GRPO, **grpo}, methods=BASE_METHODS,
                               hybrid={**base.hybrid, **hybrid})


def link_table(work: Path, table_work: Path) -> Workspace:
    """``work`` with the table's worlds, SFT start and reward models linked in (runs stay separate)."""
    missing = [d for d in ("worlds", "sft", "rm") if not (table_work / d).is_dir()]
    if missing:
        raise SystemExit(f"{table_work} has no {', '.join(missing)}: run experiments/mor_table.py --profile full first")
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link, target = work / name, (table_work / name).resolve()
        target.mkdir(exist_ok=True)
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return Workspace(work)


def plan_arms(base: Profile, ws: Workspace, arms: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[int, ...]]]
              ) -> list[tuple[str, str, JobInputs]]:
    """(arm, reward, job inputs) of every run, with the table's reward-model checkpoints."""
    out = []
    for name, (grpo, rewards, seeds) in arms.items():
        for reward in rewards:
            m, hybrid = REWARDS[reward]
            p = arm_profile(base, grpo, hybrid)
            jobs = [RunJob(name, method(m).world, m, s, int(p.grpo["steps"])) for s in seeds]
            planned, specs = inputs_for(p, ws, jobs)
            ckpt = {s: prepare_rm(p, ws, s) for s in specs}
            out += [(name, reward, JobInputs(job, p, ws, tuple((s, str(ckpt[s][0])) for s in nodes)))
                    for job, nodes, _ in planned]
    return out


def scores(result: dict[str, Any], clients: list[str]) -> dict[str, float]:
    bench = result["eval"]["benchmarks"]
    out = {f"acc:{b}": x["vqa_accuracy"] for b, x in bench.items()}
    out["acc_mean"] = fmean(x["vqa_accuracy"] for x in bench.values())
    out["pref_mean"] = fmean(result["eval"]["client_preference"][c] for c in clients)
    return out


def change(per_seed: list[dict[str, float]], start: dict[str, float]) -> dict[str, dict[str, float]]:
    """Mean change against the start and its standard error over seeds (nan with one seed)."""
    out = {}
    for k in start:
        d = [s[k] - start[k] for s in per_seed]
        out[k] = {"mean": fmean(d), "se": stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan"),
                  "seeds": [round(x, 4) for x in d]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table-work", type=Path, default=Path("runs/experiments/full"))
    ap.add_argument("--work", type=Path, default=Path("runs/grpo_settings"))
    ap.add_argument("--profile", default="full", help="The table profile whose world and reward models the arms use.")
    ap.add_argument("--arms", default=",".join(ARMS), help="Comma-separated arm names (default: all).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON with every number (stdout gets one line per arm).")
    args = ap.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    base = profile(args.profile)
    ws = link_table(args.work, args.table_work)
    items = plan_arms(base, ws, {a: ARMS[a] for a in args.arms.split(",")})
    clients = [c.name for c in base.world.clients]
    results = _pool_map(run_job, [it for _, _, it in items], args.workers, lambda it, r: None)
    sft_eval = next(iter(sorted((ws.root / "sft_eval").glob("main-*.json"))), None)
    if sft_eval is None:
        raise SystemExit(f"no SFT evaluation under {ws.root / 'sft_eval'}: run the table first")
    start = scores(json.loads(sft_eval.read_text()), clients)
    rows: dict[str, dict[str, Any]] = {}
    for (arm, reward, it), r in zip(items, results, strict=True):
        row = rows.setdefault(f"{arm}/{reward}", {"arm": arm, "reward": reward, "grpo": it.profile.grpo,
                                                  "runs": []})
        row["runs"].append({"seed": it.job.seed, **scores(r, clients), "kl_last": r["curves"]["kl"][-1]})
    for key, row in rows.items():
        row["change"] = change([{k: x[k] for k in start} for x in row["runs"]], start)
        a, p = row["change"]["acc_mean"], row["change"]["pref_mean"]
        print(f"{key:24s} acc {a['mean']:+.3f} ± {a['se']:.3f}  pref {p['mean']:+.3f} ± {p['se']:.3f}  "
              f"seeds {len(row['runs'])}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"start": start, "base_grpo": BASE_GRPO, "arms": rows}, indent=1,
                                       allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
