"""The cross-client adaptability claim on its own: does a new expert who joins mid-run help?

    python experiments/adaptability.py --profile full --out experiments/results/adaptability

The world is the table's generalisation world: no training client covers the profile's
``claims.gen_benchmark`` (charts). In one MoR run per seed that benchmark's expert (bank, served by
the very RM it serves in the main table) joins after ``claims.adapt_join_step``: its node enters
the fan-out, the router is rebuilt and refitted on the server's router pairs. The control is the
same run (same seed, prompts and sampling) without it. Every ``claims.adapt_eval_every`` steps the
policy is evaluated (greedy, a fixed test subset): the joiner's oracle preference, accuracy on its
home benchmark and the other clients' preference; the end values compared are each run's final
evaluation (``eval_examples`` per benchmark). Writes ``adaptability.json`` (the summary the table
also holds, plus each run's curve, final evaluation and router weights) and ``adaptability.png``.

It runs the table's own jobs through its driver, in the table's ``--work`` folder (default
``runs/experiments/<profile>``): a later `mor_table.py` run reuses them, and this reuses the table's.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from services.pipeline.table import plots  # noqa: E402
from services.pipeline.table.driver import adapt_joiner, plan, run_jobs  # noqa: E402
from services.pipeline.table.prepare import Workspace, prepare_sft, prepare_worlds  # noqa: E402
from services.pipeline.table.profiles import PROFILES, profile  # noqa: E402
from services.pipeline.table.report import adaptability_summary  # noqa: E402

SCENARIOS = ("adapt", "adapt_control")


def run(profile_name: str, out: Path, work: Path, workers: int | None, command: str,
        console: Console) -> dict[str, Any]:
    torch.set_num_threads(1)
    p = profile(profile_name)
    joiner = adapt_joiner(p)
    if joiner is None:
        raise SystemExit(f"profile {p.name}: no training client's home is claims.gen_benchmark "
                         f"{p.claims.gen_benchmark!r}, so no expert can join")
    ws = Workspace(work)
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    prepare_worlds(p, ws, console, names=("main", "general"))
    prepare_sft(p, ws, console)
    jobs = [j for j in plan(p, joiner) if j.scenario in SCENARIOS]
    results, rm_table = run_jobs(p, ws, jobs, p.workers if workers is None else workers, console, timing)
    jobs_by_key = {r["key"]: r for r in results}
    summary = adaptability_summary(p, jobs_by_key, joiner)
    out.mkdir(parents=True, exist_ok=True)
    plots.adaptability({"adaptability": summary}, jobs_by_key, out / "adaptability.png")
    timing["total"] = time.perf_counter() - t0
    doc = {
        "command": command, "profile": p.name, "summary": summary, "reward_models": rm_table, "timing": timing,
        "claims": {k: getattr(p.claims, k) for k in ("gen_benchmark", "adapt_join_step", "adapt_steps",
                                                      "adapt_eval_every", "adapt_eval_examples", "adapt_seeds")},
        "jobs": {k: {"track": r["track"], "eval": r["eval"], "router_domains": r["router_domains"],
                     "rm_accuracy": r["rm_accuracy"], "weights": r["curves"]["weights"], "seconds": r["seconds"]}
                 for k, r in jobs_by_key.items()},
    }
    (out / "adaptability.json").write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=True))
    return doc


def report(summary: dict[str, Any]) -> str:
    """A few lines: the per-seed numbers and the joined-minus-control differences with their se."""
    b, c = summary["benchmark"], summary["client"]
    lines = [f"{c} (the {b} expert) joins after step {summary['join_step']}; end of run, joined / control:"]
    for seed, v in summary["seeds"].items():
        lines.append(f"  seed {seed}: {c} preference {v['client_end']:.3f} / {v['client_end_control']:.3f}, "
                     f"{b} accuracy {v['domain_acc_end']:.3f} / {v['domain_acc_end_control']:.3f}, others' preference "
                     f"{v['others_end']:.3f} / {v['others_end_control']:.3f}, steps to improve "
                     f"{v['steps_to_improve']} / {v['steps_to_improve_control']}")
    for key, name in (("client_gain_vs_control", f"{c} preference"), ("domain_acc_gain_vs_control", f"{b} accuracy"),
                      ("others_change_vs_control", "others' preference")):
        d = summary[key]
        spread = f"± {d['std'] / d['n'] ** 0.5:.3f} (se over {d['n']} seeds)" if d["n"] > 1 else f"({d['n']} seed, no se)"
        lines.append(f"  joined minus control, {name}: {d['mean']:+.3f} {spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Cross-client adaptability: an uncovered benchmark's expert joins mid-run.")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="Table profile (see profiles.py).")
    ap.add_argument("--out", type=Path, required=True, help="Folder for adaptability.json and adaptability.png.")
    ap.add_argument("--work", type=Path, default=None, help="The table's work folder (default runs/experiments/<profile>).")
    ap.add_argument("--workers", type=int, default=None, help="Runs at once (default: the profile's).")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be at least 1 (got {args.workers})")
    command = "python experiments/adaptability.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    console = Console(stderr=True)
    doc = run(args.profile, args.out, args.work or Path("runs/experiments") / args.profile, args.workers, command, console)
    print(report(doc["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
