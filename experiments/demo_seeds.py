"""Is a change to the demo's MoR run more than seed noise? Rerun it over seeds from the same start.

    make demo                                                   # world, SFT start and RMs in runs/local
    python experiments/demo_seeds.py --seeds 0 1 2              # the committed config, three seeds
    python experiments/demo_seeds.py --seeds 0 1 --set hybrid.rm_weight=0 --set grpo.lr=1e-3

Each seed is one MoR run of examples/local.yaml's `run` section (with any `--set` overrides) from the
workdir's SFT policy, against the workdir's client RMs behind real reward nodes on 127.0.0.1, the
policy sampled in process. The SFT start and every run's final policy are evaluated greedily on the
same held-out examples and compared pair by pair: exact-match change with the answers that turned
right / wrong, mean client preference change with its paired standard error; the last rows are the
mean and standard error over seeds, per benchmark and of the benchmarks' mean ("all"). Writes
<out>/results.json (per seed, the summary over seeds, the config used).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from services.common.config import RewardNodeSettings, RunConfig, StackConfig, load_yaml  # noqa: E402
from services.common.config.base import ConfigError, build  # noqa: E402
from services.common.data.world import World, load_world  # noqa: E402
from services.common.evaluation import evaluate_policy, paired_change  # noqa: E402
from services.pipeline.table.summary import mean_std  # noqa: E402


def apply_overrides(data: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """``section.field=value`` (value parsed as YAML) into a copy of the run config's data."""
    out = json.loads(json.dumps(data, default=str))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected section.field=value")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {pair!r}: run config has no section {part!r}")
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return out


async def one_run(world: World, workdir: Path, run_data: dict[str, Any]) -> Path:
    """One MoRRun against the workdir's RMs; returns the final policy folder."""
    from services.orchestrator.training_run import MoRRun
    from services.pipeline.reward_models import serve_nodes

    settings = [RewardNodeSettings.loopback(n, world.clients[n].rm_arch, workdir / "rm" / n) for n in world.training_clients()]
    async with serve_nodes(settings) as endpoints:
        data = {**run_data, "nodes": list(endpoints.values())}
        cfg = build(RunConfig, data, source="examples config + --set")
        run = MoRRun(cfg, on_status=lambda _msg: None)
        await run.run()
    return Path(cfg.output_dir) / "policy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/local"), help="a `make demo` workdir (world/, policy-sft/, rm/)")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "local.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a field of the run config, e.g. grpo.steps=40 or hybrid.rm_weight=0 (repeatable)")
    ap.add_argument("--examples", type=int, default=1000, help="held-out examples per benchmark")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default <workdir>/seeds)")
    args = ap.parse_args()
    console = Console()
    out = args.out or args.workdir / "seeds"
    sft = args.workdir / "policy-sft"
    missing = [p for p in (args.workdir / "world" / "manifest.json", sft / "config.json") if not p.is_file()]
    if missing:
        sys.exit(f"{missing[0]} not found: run `make demo` first (or pass the --workdir it used)")
    world = load_world(args.workdir / "world")
    base = load_yaml(StackConfig, args.config).run.model_dump(mode="json")
    try:
        run_data = apply_overrides(base, args.overrides)
        build(RunConfig, run_data, source="examples config + --set")
    except ConfigError as exc:
        sys.exit(str(exc))

    from services.common.models.factory import load_vlm

    console.print(f"evaluating the SFT start {sft} on {args.examples} held-out examples per benchmark")
    start = evaluate_policy(load_vlm(sft), world, per_benchmark=args.examples, per_example=True)
    results: dict[str, Any] = {"workdir": str(args.workdir), "overrides": args.overrides, "examples": args.examples,
                               "start": {b: r["exact_match"] for b, r in start["benchmarks"].items()}, "seeds": {}}
    for seed in args.seeds:
        t0 = time.perf_counter()
        run_out = out / f"seed{seed}"
        data = {**run_data, "seed": seed, "world": str(world.root), "output_dir": str(run_out),
                "policy": {"path": str(sft)}, "sampler": None}
        console.print(f"seed {seed}: {data['grpo']['steps']} GRPO steps")
        policy = asyncio.run(one_run(world, args.workdir, data))
        after = evaluate_policy(load_vlm(policy), world, per_benchmark=args.examples, per_example=True)
        results["seeds"][str(seed)] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "exact_match": {b: r["exact_match"] for b, r in after["benchmarks"].items()},
            "preference": {b: r["preference"] for b, r in after["benchmarks"].items()},
            "paired": {b: paired_change(start, after, b) for b in world.benchmarks},
        }
    results["summary"] = summary(results, world.benchmarks)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**results, "run_config": run_data}, indent=2))
    console.print(table(results, world.benchmarks))
    console.print(f"[green]results[/] {out / 'results.json'}")


def over_seeds(values: list[float]) -> dict[str, float]:
    """Mean and standard error over seeds (se 0 with one seed: no spread to measure)."""
    m = mean_std(values)
    return {"mean": m["mean"], "se": m["std"] / m["n"] ** 0.5}


def summary(results: dict[str, Any], benchmarks: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per benchmark and for their mean ("all"): the exact-match and preference changes, mean ± se over seeds.

    A run's paired se over examples misses the run's own randomness; the spread over seeds from the
    same start holds both (the demo's per-benchmark gains moved by up to 0.06 between seeds)."""
    changes: dict[str, dict[str, list[float]]] = {b: {"exact_match": [], "preference": []} for b in [*benchmarks, "all"]}
    for r in results["seeds"].values():
        em = {b: r["exact_match"][b] - results["start"][b] for b in benchmarks}
        pref = {b: r["paired"][b]["preference_change"] for b in benchmarks}
        for b in benchmarks:
            changes[b]["exact_match"].append(em[b])
            changes[b]["preference"].append(pref[b])
        changes["all"]["exact_match"].append(statistics.mean(em.values()))
        changes["all"]["preference"].append(statistics.mean(pref.values()))
    return {b: {k: over_seeds(v) for k, v in c.items()} for b, c in changes.items()}


def table(results: dict[str, Any], benchmarks: list[str]) -> Table:
    t = Table(title=f"MoR minus its SFT start, {results['examples']} held-out examples per benchmark"
                    + (f" ({', '.join(results['overrides'])})" if results["overrides"] else ""))
    for col in ("seed", "benchmark", "exact match", "turned right / wrong", "preference ± paired se"):
        t.add_column(col, justify="left" if col in ("seed", "benchmark") else "right")
    for seed, r in results["seeds"].items():
        for b in benchmarks:
            p = r["paired"][b]
            t.add_row(seed, b, f"{r['exact_match'][b] - results['start'][b]:+.3f}",
                      f"{p['turned_right']} / {p['turned_wrong']}",
                      f"{p['preference_change']:+.3f} ± {p['preference_se']:.3f}", end_section=b == benchmarks[-1])
    if len(results["seeds"]) > 1:
        for b, s in results["summary"].items():
            em, pref = s["exact_match"], s["preference"]
            t.add_row("mean ± se", b, f"{em['mean']:+.3f} ± {em['se']:.3f}", "", f"{pref['mean']:+.3f} ± {pref['se']:.3f}")
    return t


if __name__ == "__main__":
    main()
