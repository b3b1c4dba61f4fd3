"""How well does each router fuse the clients' RMs? Pair accuracy on fresh server-labelled preference pairs.

    make demo                                     # world, SFT policy and client RMs under runs/local
    python experiments/router_accuracy.py --workdir runs/local --pairs 900 --seeds 6

A router is trained on the server's router pairs (150 pairs in the demo world, 30 of them held out
for the accuracy the run logs), which is too small to tell routers apart. This script labels
``--pairs`` fresh pairs with the same server oracle as the router pairs (neutral, or each domain's
conventional style: the world's ``router_pair_styles``), on held-out test images, scores them on
the demo's reward nodes (real gRPC nodes on 127.0.0.1, the same calibration as a run), fits every
router kind on the router pairs as a run does (``--seeds`` seeds for the trained ones), and prints
the share of fresh pairs each ranks right, overall and per benchmark, beside the **oracle router**:
each benchmark's pairs routed to the client whose home it is (the largest weight of its domain mix;
the uniform mean where no client has it as home), a ceiling only the evaluation can build because it
reads the benchmark name. It also reports each RM's own accuracy on the fresh correctness pairs per
benchmark (an expert should be high at home, near chance elsewhere), and every router's accuracy per
pair kind (correctness, style, format: on a neutral world only correctness and format exist).

Writes ``--out`` (default <workdir>/router_accuracy.json):
``{"pairs": N, "routers": {"mean": a, "static": a, "mor": a, "oracle": a, "single:<client>": a, ...},
"nodes": {"<client>": {"<benchmark>": a}}, "by_benchmark": {...}, "by_kind": {...}, "seeds": S,
"mor_minus": {"<router>": {"diff": d, "se": se}}, ...}`` where trained routers (static, mor) give their mean over
the seeds, and mor_minus is mor's per-pair credit minus each other router's with its paired standard error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from services.common.config import RewardNodeSettings, StackConfig, load_yaml  # noqa: E402
from services.common.data.prefs import make_pair  # noqa: E402
from services.common.data.world import World, load_world  # noqa: E402

FIXED = ("mean", "min", "max", "prototype")
TRAINED = ("static", "mor")


def fresh_pairs(world: World, n: int, seed: int) -> list:
    """About n server-oracle pairs, an equal share per benchmark, on test images (never those of the router pairs)."""
    rng = np.random.default_rng(seed)
    oracle, out = world.server_oracle(), []
    for b in world.benchmarks:
        exs = world.examples(b, "test")
        for i in rng.permutation(len(exs))[: n // len(world.benchmarks)]:
            try:
                out.append(make_pair(f"fresh-{b}-{i}", "server", exs[int(i)], oracle, rng, world.config.pair_margin))
            except ValueError:  # no candidate answers clear the margin for this example
                continue
    return out


async def score(world: World, workdir: Path, router_cfg, pairs: list) -> tuple[tuple[str, ...], dict, object, object]:
    """(node ids, node infos, scored router pairs, scored fresh pairs), scored on real loopback nodes."""
    from services.common.config.run import FanoutSection
    from services.orchestrator.calibration import NodeCalibration
    from services.orchestrator.embedding import PromptEmbedder
    from services.orchestrator.fanout import RewardFanout
    from services.orchestrator.fusion.trainer import score_router_pairs
    from services.pipeline.reward_models import serve_nodes

    settings = [RewardNodeSettings.loopback(n, world.clients[n].rm_arch, workdir / "rm" / n, prototype={"publish": True})
                for n in world.training_clients()]
    async with serve_nodes(settings) as endpoints:
        fanout = RewardFanout([ep.model_copy(update={"timeout_s": 600.0}) for ep in endpoints.values()],
                              FanoutSection(step_deadline_s=900, min_nodes=len(endpoints)))
        try:
            infos = await fanout.start()
            calibration = NodeCalibration(list(fanout.node_ids), infos, router_cfg)
            embedder = PromptEmbedder()
            cal = await score_router_pairs(fanout, calibration, embedder, world.router_pairs()[: router_cfg.pairs], world)
            fresh = await score_router_pairs(fanout, calibration, embedder, pairs, world)
        finally:
            await fanout.close()
    return fanout.node_ids, infos, cal, fresh


def accuracies(margin: torch.Tensor, benchmarks: list[str], pairs: list) -> dict[str, float]:
    """Pair accuracy of fused margins[P] (chosen minus rejected), overall, per benchmark and per pair kind
    (keys "kind:<kind>")."""
    from services.orchestrator.fusion.trainer import pair_accuracy

    out = {"all": pair_accuracy(margin)}
    groups = {b: [i for i, p in enumerate(pairs) if p.benchmark == b] for b in benchmarks}
    for kind in sorted({p.kind for p in pairs}):
        groups[f"kind:{kind}"] = [i for i, p in enumerate(pairs) if p.kind == kind]
    for key, idx in groups.items():
        out[key] = pair_accuracy(margin[torch.tensor(idx)])
    return out


def paired_against(mine: torch.Tensor, others: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean per-pair difference mine - other, with its paired standard error over the pairs."""
    out = {}
    for kind, other in others.items():
        d = mine - other
        out[kind] = {"diff": float(d.mean()), "se": float(d.std(unbiased=True) / len(d) ** 0.5)}
    return out


def home_clients(world: World, nodes: tuple[str, ...]) -> dict[str, str]:
    """benchmark -> the client whose home it is (largest domain weight, the first such client)."""
    out: dict[str, str] = {}
    for n in nodes:
        out.setdefault(world.clients[n].home, n)
    return out


def oracle_margin(margins: dict[str, torch.Tensor], homes: dict[str, str], names: list[str]) -> torch.Tensor:
    """Each pair's margin from its benchmark's home RM (the mean fusion's where no client has it as home)."""
    return torch.stack([margins[f"single:{homes[b]}" if b in homes else "mean"][i] for i, b in enumerate(names)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/local"), help="a `make demo` workdir (world/, rm/<node>/)")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "local.yaml")
    ap.add_argument("--pairs", type=int, default=900, help="fresh pairs (split evenly over the benchmarks)")
    ap.add_argument("--seeds", type=int, default=6, help="seeds of the trained routers (split and initialisation)")
    ap.add_argument("--out", type=Path, default=None, help="JSON written here (default <workdir>/router_accuracy.json)")
    args = ap.parse_args()
    from services.orchestrator.fusion import build_router

    console = Console()
    world = load_world(args.workdir / "world")
    missing = [n for n in world.training_clients() if not (args.workdir / "rm" / n / "metadata.json").is_file()]
    if missing:
        sys.exit(f"no trained RM for {', '.join(missing)} under {args.workdir / 'rm'}: run `make demo` first")
    router_cfg = load_yaml(StackConfig, args.config).run.router
    torch.set_num_threads(1)
    pairs = fresh_pairs(world, args.pairs, seed=12345)
    console.print(f"scoring {len(world.router_pairs()[: router_cfg.pairs])} router pairs and "
                  f"{len(pairs)} fresh pairs on {len(world.training_clients())} nodes")
    nodes, infos, cal, fresh = asyncio.run(score(world, args.workdir, router_cfg, pairs))
    from services.orchestrator.fusion.trainer import fused_pair_margin, pair_accuracy, pair_credit

    names, dim = [p.benchmark for p in pairs], int(cal.features.shape[1])
    results: dict[str, dict] = {}
    margins: dict[str, torch.Tensor] = {}
    credit: dict[str, torch.Tensor] = {}  # per-pair credit (trained routers: mean over seeds)
    for kind in [*FIXED, *(f"single:{n}" for n in nodes)]:
        margins[kind] = fused_pair_margin(build_router(kind, nodes, router_cfg, feature_dim=dim, infos=infos), fresh)
        results[kind] = {k: [v] for k, v in accuracies(margins[kind], world.benchmarks, pairs).items()}
        credit[kind] = pair_credit(margins[kind])
    homes = home_clients(world, nodes)
    oracle = oracle_margin(margins, homes, names)
    results["oracle"] = {k: [v] for k, v in accuracies(oracle, world.benchmarks, pairs).items()}
    credit["oracle"] = pair_credit(oracle)
    for kind in TRAINED:
        runs, seed_hits = [], []
        for seed in range(args.seeds):
            r = build_router(kind, nodes, router_cfg, feature_dim=dim, infos=infos, seed=seed)
            r.fit(cal)
            m = fused_pair_margin(r, fresh)
            runs.append(accuracies(m, world.benchmarks, pairs))
            seed_hits.append(pair_credit(m))
        results[kind] = {k: [run[k] for run in runs] for k in runs[0]}
        credit[kind] = torch.stack(seed_hits).mean(0)
    paired = paired_against(credit["mor"], {k: v for k, v in credit.items() if k != "mor"})
    correct = [i for i, p in enumerate(pairs) if p.kind == "correctness"]
    node_acc = {n: {b: pair_accuracy(margins[f"single:{n}"][[i for i in correct if names[i] == b]])
                    for b in world.benchmarks} for n in nodes}

    n = fresh.n_pairs
    styles = world.config.router_pair_styles
    kinds = [k for k in next(iter(results.values())) if k.startswith("kind:")]
    columns = ["all", *world.benchmarks, *kinds]
    table = Table(title=f"pair accuracy on {n} fresh pairs, {styles} server oracle (± binomial se {0.5 / n ** 0.5:.3f} "
                        f"at 0.5; trained routers: mean ± std over {args.seeds} seeds)")
    for col in ["router", *columns]:
        table.add_column(col, justify="left" if col == "router" else "right")
    for kind, acc in results.items():
        cells = [f"{statistics.mean(v):.3f}" + (f" ± {statistics.pstdev(v):.3f}" if len(v) > 1 else "")
                 for v in (acc[c] for c in columns)]
        table.add_row(kind, *cells)
    console.print(table)
    console.print("mor minus each router, per pair (± paired se over the pairs): " + "; ".join(
        f"{k} {v['diff']:+.3f} ± {v['se']:.3f}" for k, v in paired.items()))
    console.print("RM accuracy on fresh correctness pairs: " + "; ".join(
        f"{n} " + " ".join(f"{b} {a:.3f}" for b, a in node_acc[n].items()) for n in nodes))
    out = args.out or args.workdir / "router_accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "pairs": n, "router_pairs": cal.n_pairs, "seeds": args.seeds, "homes": homes, "router_pair_styles": styles,
        "pair_kinds": {k.removeprefix("kind:"): sum(p.kind == k.removeprefix("kind:") for p in pairs) for k in kinds},
        "routers": {k: statistics.mean(v["all"]) for k, v in results.items()},
        "nodes": node_acc,
        "by_benchmark": {k: {c: statistics.mean(x) for c, x in v.items() if not c.startswith("kind:")}
                         for k, v in results.items()},
        "by_kind": {k: {c.removeprefix("kind:"): statistics.mean(x) for c, x in v.items() if c.startswith("kind:")}
                    for k, v in results.items()},
        "per_seed": {k: v["all"] for k, v in results.items() if len(v["all"]) > 1},
        "mor_minus": paired,
    }, indent=2) + "\n")
    console.print(f"[green]results[/] {out}")


if __name__ == "__main__":
    main()
