"""results.json (every number), results.md (tables made from that JSON) and the plots.

The markdown is rendered from the summary dict that is also written to the JSON, cell by cell
with ``cell()``, so the two cannot disagree (the test suite parses the markdown back to check).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from services.pipeline.table import summary as sm
from services.pipeline.table.plots import make_plots
from services.pipeline.table.prepare import Workspace, noise_name
from services.pipeline.table.profiles import Profile, method


def cell(stat: dict[str, float] | float | None, digits: int = 3) -> str:
    """"mean ± std" of an aggregate, a bare number, or "n/a"."""
    if stat is None:
        return "n/a"
    if isinstance(stat, dict):
        m, s = stat.get("mean", float("nan")), stat.get("std", float("nan"))
        if m != m:
            return "n/a"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if s == s else f"{m:.{digits}f}"
    return "n/a" if stat != stat else f"{stat:.{digits}f}"


def signed(x: float) -> str:
    return "n/a" if x != x else f"{x:+.3f}"


def build_summary(p: Profile, jobs: dict[str, dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    clients = context["training_clients"]
    c = p.claims
    main = sm.table_rows(jobs, "main", list(dict.fromkeys([*p.methods, *c.noise_methods])), clients)
    general = sm.table_rows(jobs, "general", c.gen_methods, _general_clients(jobs, clients))
    covered = sorted({b for r in jobs.values() if r["spec"]["job"]["scenario"] == "general"
                      for b in r["eval"]["benchmarks"]} - {c.gen_benchmark})
    levels = {0.0: {m: main[m] for m in c.noise_methods if m in main}}
    for share in c.noise_levels:
        levels[share] = sm.table_rows(jobs, noise_name(share), c.noise_methods, clients)
    weights = {share: {m: {"all": sm.router_weight(sm.runs_of(jobs, scen, m), c.noise_client),
                           "home": sm.router_weight(sm.runs_of(jobs, scen, m), c.noise_client, _home(p, c.noise_client))}
                       for m in c.noise_methods}
               for share, scen in [(0.0, "main"), *((x, noise_name(x)) for x in c.noise_levels)]}
    return {
        "main": {"order": list(p.methods), "methods": {m: {"label": method(m).label, **main[m]} for m in p.methods},
                 "mor_vs": sm.comparisons({m: main[m] for m in p.methods}),
                 # The router alone against the other ways to fuse the same client RMs (no rules anywhere).
                 "router_vs": sm.comparisons({m: main[m] for m in p.methods if m == "mor_norules"
                                              or m in ("mean", "min", "static") or m.startswith("single:")},
                                             against="mor_norules")},
        "generalisation": sm.generalisation(general, c.gen_benchmark, covered),
        "robustness": sm.robustness(levels, c.noise_client, weights),
        "adaptability": adaptability_summary(p, jobs, context.get("adapt_client")),
    }


def adaptability_summary(p: Profile, jobs: dict[str, dict[str, Any]], joiner: str | None) -> dict[str, Any] | None:
    """The adaptability claim from the jobs' results: ``joiner``'s runs against their controls, the
    profile's other training clients as the others (None without a joiner or its runs)."""
    c = p.claims
    join = {r["spec"]["job"]["seed"]: r for r in sm.runs_of(jobs, "adapt", "mor")}
    control = {r["spec"]["job"]["seed"]: r for r in sm.runs_of(jobs, "adapt_control", "mor")}
    if not joiner or not join:
        return None
    others = [x.name for x in p.world.clients if x.name != joiner]
    return sm.adaptability(join, control, joiner, others, c.gen_benchmark, c.adapt_join_step, c.improve_margin)


def _home(p: Profile, client: str) -> str | None:
    spec = next((x for x in p.world.all_clients() if x.name == client), None)
    return spec.home if spec is not None else None


def _general_clients(jobs: dict[str, dict[str, Any]], fallback: list[str]) -> list[str]:
    for r in jobs.values():
        if r["spec"]["job"]["scenario"] == "general":
            return [k for k in r["eval"]["client_preference"]]
    return fallback


def main_table(s: dict[str, Any], benchmarks: list[str], clients: list[str], held_out: str | None) -> list[str]:
    prefs = [*clients, *([held_out] if held_out else [])]
    head = (["method"] + [f"acc {b}" for b in benchmarks] + ["acc mean"]
            + [f"pref {c}" + (" (held out)" if c == held_out else "") for c in prefs] + ["pref mean", "reward", "KL"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in s["main"]["methods"].values():
        a = row["agg"]
        cells = ([row["label"]] + [cell(a.get(f"acc:{b}")) for b in benchmarks] + [cell(a.get("acc_mean"))]
                 + [cell(a.get(f"pref:{c}")) for c in prefs] + [cell(a.get("pref_mean")),
                                                                cell(a.get("reward_last")), cell(a.get("kl_last"), 4)])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(p: Profile, s: dict[str, Any], context: dict[str, Any], timing: dict[str, float]) -> str:
    clients, held_out = context["training_clients"], context["held_out_client"]
    first = next(iter(s["main"]["methods"].values()))
    benchmarks = sorted(k[4:] for k in first["agg"] if k.startswith("acc:"))
    g = p.grpo
    out = [f"# MoR vs baselines — profile `{p.name}`", "",
           f"Command: `{context['command']}`", "",
           f"Policy {p.policy.arch}/{p.policy.preset}, one SFT start for every method; GRPO {g['steps']} steps of "
           f"{g['prompts_per_step']} prompts x {g['group_size']} answers (lr {g['lr']}), seeds {list(p.seeds)}; "
           f"held-out split, {p.eval_examples} examples per benchmark, greedy. acc = VQA accuracy; pref = mean "
           f"true-oracle preference of the client on its own domains; reward and KL = mean of the last 3 steps. "
           f"Cells are mean ± std over seeds. {_time_note(context, timing)}", "",
           "## Main table", "", *main_table(s, benchmarks, clients, held_out), "",
           "## MoR against each baseline (paired over seeds; better/worse = |mean diff| > 2 SE)", "",
           "| baseline | Δ acc mean | verdict | Δ pref mean | verdict |", "|---|---|---|---|---|"]
    for m, cmp in s["main"]["mor_vs"].items():
        a, b = cmp["acc_mean"], cmp["pref_mean"]
        out.append(f"| {method(m).label} | {signed(a['diff'])} | {a['verdict']} | {signed(b['diff'])} | {b['verdict']} |")
    if s["main"]["router_vs"]:
        out += ["", "## The MoR router alone (no rule reward) against the other fusions of the same client RMs", "",
                "| fusion | Δ acc mean | verdict | Δ pref mean | verdict |", "|---|---|---|---|---|"]
        for m, cmp in s["main"]["router_vs"].items():
            a, b = cmp["acc_mean"], cmp["pref_mean"]
            out.append(f"| {method(m).label} | {signed(a['diff'])} | {a['verdict']} | {signed(b['diff'])} | {b['verdict']} |")
    ge = s["generalisation"]
    out += ["", f"## Generalisation: `{ge['benchmark']}` is in no client's preference data", "",
            f"Clients' domain mixes leave `{ge['benchmark']}` out; the server prompt pool and router pairs still "
            f"span every benchmark. Covered: {', '.join(ge['covered'])}.", "",
            f"| method | acc {ge['benchmark']} (held out) | change vs SFT | acc covered | MoR minus method, held out |",
            "|---|---|---|---|---|"]
    for m, row in ge["methods"].items():
        cmp = ge["mor_vs"].get(m, {}).get(f"acc:{ge['benchmark']}")
        out.append(f"| {method(m).label} | {cell(row['held_out'])} | {signed(row['held_out_gain'])} | "
                   f"{cell(row['covered'])} | {signed(cmp['diff']) + ' (' + cmp['verdict'] + ')' if cmp else '—'} |")
    rb = s["robustness"]
    lv = rb["levels"]
    out += ["", f"## Robustness: {rb['noisy_client']}'s labels flipped", "",
            "| method | " + " | ".join(f"acc mean @{x:.0%}" for x in lv) + " | acc drop | "
            + " | ".join(f"pref mean @{x:.0%}" for x in lv) + " | pref drop |", "|---|" + "---|" * (2 * len(lv) + 2)]
    for m, row in rb["methods"].items():
        acc = [cell(row["levels"].get(str(x), {}).get("acc_mean")) for x in lv]
        pref = [cell(row["levels"].get(str(x), {}).get("pref_mean")) for x in lv]
        out.append(f"| {method(m).label} | " + " | ".join(acc) + f" | {signed(row['drop']['acc_mean'])} | "
                   + " | ".join(pref) + f" | {signed(row['drop']['pref_mean'])} |")
    learned = {m: row["noisy_weight"] for m, row in rb["methods"].items()
               if any(w["all"]["mean"] == w["all"]["mean"] for w in row.get("noisy_weight", {}).values())}
    if learned:
        home = _home(p, rb["noisy_client"])
        out += ["", f"Router weight on {rb['noisy_client']} (mean over seeds; all benchmarks' test prompts / its home "
                f"benchmark `{home}`'s):", "", "| method | " + " | ".join(f"@{x:.0%}" for x in lv) + " |",
                "|---|" + "---|" * len(lv)]
        for m, w in learned.items():
            out.append(f"| {method(m).label} | " + " | ".join(
                f"{cell(w.get(str(x), {}).get('all'))} / {cell(w.get(str(x), {}).get('home'))}" for x in lv) + " |")
    ad = s["adaptability"]
    if ad:
        b = ad["benchmark"]
        out += ["", f"## Cross-client adaptability: `{ad['client']}` joins after step {ad['join_step']}", "",
                f"MoR in the generalisation world (no training client covers `{b}`), in which {ad['client']}'s node, "
                f"the `{b}` expert, joins mid-run (router rebuilt and refitted on the router pairs), vs the same run "
                f"without it (control). Steps to improve = steps after joining until {ad['client']}'s oracle "
                f"preference exceeds its at-join value by {ad['margin']} on the in-run track "
                f"({p.claims.adapt_eval_examples} test examples per benchmark); end values are each run's final "
                f"evaluation ({p.eval_examples} per benchmark); others = {', '.join(ad['others'])}.", "",
                f"| seed | steps to improve | same, control | pref at join | pref end | pref end, control | "
                f"acc {b} at join | acc {b} end | acc {b} end, control | others end | others end, control |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]

        def steps(x: int | None) -> str:
            return str(x) if x is not None else "never"
        for seed, v in ad["seeds"].items():
            out.append(f"| {seed} | {steps(v['steps_to_improve'])} | {steps(v['steps_to_improve_control'])} | "
                       f"{v['client_at_join']:.3f} | {v['client_end']:.3f} | {v['client_end_control']:.3f} | "
                       f"{v['domain_acc_at_join']:.3f} | {v['domain_acc_end']:.3f} | {v['domain_acc_end_control']:.3f} | "
                       f"{v['others_end']:.3f} | {v['others_end_control']:.3f} |")
        out += ["", f"Joined minus control at the end (mean ± std over seeds): {ad['client']} preference "
                f"{cell(ad['client_gain_vs_control'])}; `{b}` accuracy {cell(ad['domain_acc_gain_vs_control'])}; "
                f"other clients' preference {cell(ad['others_change_vs_control'])}; {ad['client']} improved in "
                f"{ad['improved_in']} of {ad['n']} seeds."]
    out += ["", "## Reward models (held-out pair accuracy)", "", "| node | world | kind | source | seed | accuracy |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r['node_id']} | {r['world']} | {r['kind']} | {r['source']} | {r['seed']} | {r['held_out_accuracy']:.3f} |"
            for r in context["reward_models"]]
    out += ["", "## Plots", "", *[f"![{n}]({n}.png)" for n in PLOTS], ""]
    return "\n".join(out)


def _time_note(context: dict[str, Any], timing: dict[str, float]) -> str:
    jobs = context.get("jobs", {})
    note = f"Wall time of this invocation {timing['total'] / 60:.1f} min"
    if jobs.get("reused"):
        note += (f"; {jobs['reused']} of {jobs['total']} jobs were reused from an earlier invocation with the same "
                 f"settings (see experiments/results/README.md for the wall time of the run that made them)")
    return note + (f"; the run times of the {jobs.get('total', 0)} jobs add up to "
                   f"{jobs.get('compute_seconds', 0.0) / 60:.1f} min (with several workers they overlap).")


PLOTS = ("curves", "router_weights", "accuracy_bars", "robustness", "adaptability")


def write_report(p: Profile, jobs: dict[str, dict[str, Any]], context: dict[str, Any], timing: dict[str, float],
                 out: Path, ws: Workspace, console: Console) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    s = build_summary(p, jobs, context)
    plots = make_plots(p, s, jobs, context, out)
    timing["report"] = time.perf_counter() - t
    timing["total"] = timing["total_before_report"] + timing["report"]
    results = {**context, "timing": timing, "summary": s, "plots": plots,
               "jobs": {k: {key: v for key, v in r.items() if key != "spec"} | {"job": r["spec"]["job"]}
                        for k, r in sorted(jobs.items())}}
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=True) + "\n")
    (out / "results.md").write_text(render(p, s, context, timing))
    console.print(f"[green]results[/] {out / 'results.md'}, {out / 'results.json'}, {len(plots)} plots")
    return results


__all__ = ["PLOTS", "build_summary", "cell", "render", "write_report"]
