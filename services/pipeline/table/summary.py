"""From per-job results to the numbers of the report: mean and std over seeds, paired comparisons,
and the three claim tests. Pure functions on the job dicts of runs.run_job; nothing here runs a model.

Metric names: ``acc:<benchmark>`` (VQA accuracy), ``em:<benchmark>`` (exact match), ``format:<benchmark>``,
``pref:<client>`` (mean true-oracle preference of the client on its own domains), ``acc_mean`` and
``pref_mean`` (means over benchmarks and over the training clients), ``reward_last`` and ``kl_last``
(mean of the last 3 steps' reward and KL; NaN for the SFT start).

A paired comparison uses the seeds both methods ran: d_s = metric(A, s) - metric(B, s). "better"
when mean(d) > 2 * SE(d), "worse" when mean(d) < -2 * SE(d), otherwise "within noise"; with one
seed there is no SE and the verdict is "one seed".
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import fmean, stdev
from typing import Any

NAN = float("nan")


def metrics(result: dict[str, Any], training_clients: Sequence[str]) -> dict[str, float]:
    """The flat metrics of one job result (see the module docstring)."""
    ev = result["eval"]
    out: dict[str, float] = {}
    for b, row in ev["benchmarks"].items():
        out[f"acc:{b}"] = row["vqa_accuracy"]
        out[f"em:{b}"] = row["exact_match"]
        out[f"format:{b}"] = row["format_ok"]
    for c, v in ev["client_preference"].items():
        out[f"pref:{c}"] = v
    out["acc_mean"] = fmean(row["vqa_accuracy"] for row in ev["benchmarks"].values())
    out["pref_mean"] = fmean(ev["client_preference"][c] for c in training_clients)
    curves = result.get("curves")
    out["reward_last"] = _tail_mean(curves["reward"]) if curves else NAN
    out["kl_last"] = _tail_mean(curves["kl"]) if curves else NAN
    return out


def _tail_mean(values: Sequence[float], n: int = 3) -> float:
    tail = [v for v in values[-n:] if v == v]
    return fmean(tail) if tail else NAN


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation (population std 0 with one value)."""
    v = [x for x in values if x == x]
    if not v:
        return {"mean": NAN, "std": NAN, "n": 0}
    return {"mean": fmean(v), "std": stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """metric -> {mean, std, n} over the seeds of one method."""
    names = sorted({k for m in per_seed.values() for k in m})
    return {k: mean_std(m.get(k, NAN) for m in per_seed.values()) for k in names}


def paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], metric: str) -> dict[str, Any]:
    """A minus B on ``metric`` over their common seeds, with the verdict of the module docstring."""
    seeds = sorted(set(a) & set(b))
    d = [a[s][metric] - b[s][metric] for s in seeds if a[s][metric] == a[s][metric] and b[s][metric] == b[s][metric]]
    if not d:
        return {"diff": NAN, "se": NAN, "n": 0, "verdict": "no data"}
    mean = fmean(d)
    if len(d) < 2:
        return {"diff": mean, "se": NAN, "n": 1, "verdict": "one seed"}
    se = stdev(d) / math.sqrt(len(d))
    verdict = "better" if mean > 2 * se else "worse" if mean < -2 * se else "within noise"
    return {"diff": mean, "se": se, "n": len(d), "verdict": verdict}


def runs_of(jobs: dict[str, dict[str, Any]], scenario: str, method: str) -> list[dict[str, Any]]:
    """The job results of one method in one scenario (one per seed that ran)."""
    return [r for r in jobs.values() if r["spec"]["job"]["scenario"] == scenario and r["spec"]["job"]["method"] == method]


def table_rows(jobs: dict[str, dict[str, Any]], scenario: str, methods: Sequence[str],
               training_clients: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method -> {"seeds": {seed: metrics}, "agg": aggregate} for one scenario."""
    out = {}
    for m in methods:
        per_seed = {r["spec"]["job"]["seed"]: metrics(r, training_clients) for r in runs_of(jobs, scenario, m)}
        out[m] = {"seeds": per_seed, "agg": aggregate(per_seed)}
    return out


def comparisons(rows: dict[str, dict[str, Any]], against: str = "mor",
                keys: Sequence[str] = ("acc_mean", "pref_mean")) -> dict[str, dict[str, Any]]:
    """``against`` versus every other row, paired over seeds, on each of ``keys``."""
    if against not in rows:
        return {}
    return {m: {k: paired(rows[against]["seeds"], r["seeds"], k) for k in keys}
            for m, r in rows.items() if m != against}


def generalisation(rows: dict[str, dict[str, Any]], benchmark: str, covered: Sequence[str]) -> dict[str, Any]:
    """Held-out-benchmark accuracy of each method, its change from the SFT start, and MoR vs the rest."""
    sft = rows.get("sft", {}).get("agg", {}).get(f"acc:{benchmark}", {}).get("mean", NAN)
    out: dict[str, Any] = {"benchmark": benchmark, "covered": list(covered), "methods": {}}
    for m, r in rows.items():
        held = r["agg"].get(f"acc:{benchmark}", mean_std([]))
        cov = mean_std(fmean(s[f"acc:{b}"] for b in covered) for s in r["seeds"].values())
        out["methods"][m] = {"held_out": held, "covered": cov, "held_out_gain": held["mean"] - sft}
    out["mor_vs"] = comparisons(rows, keys=(f"acc:{benchmark}",))
    return out


def router_weight(jobs: Sequence[dict[str, Any]], node: str, benchmark: str | None = None) -> dict[str, float]:
    """Mean over seeds of the router's weight on ``node`` (on ``benchmark``'s test prompts, or averaged
    over every benchmark); jobs without a learned router are skipped."""
    per = []
    for r in jobs:
        dom = r.get("router_domains") or {}
        if benchmark is None:
            rows = list(dom.values())
        else:
            rows = [dom[benchmark]] if benchmark in dom else []
        if rows and all(node in w for w in rows):
            per.append(fmean(w[node] for w in rows))
    return mean_std(per)


def robustness(levels: dict[float, dict[str, dict[str, Any]]], noisy_client: str,
               weights: dict[float, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Per method and noise level: mean accuracy and preferences, the drop from 0 to the top level and,
    for learned routers, the weight the router gives the noisy client (``weights[level][method]``)."""
    methods = sorted({m for rows in levels.values() for m in rows})
    out: dict[str, Any] = {"noisy_client": noisy_client, "levels": sorted(levels), "methods": {}}
    top = max(levels)
    for m in methods:
        per = {lv: levels[lv][m]["agg"] for lv in sorted(levels) if m in levels[lv]}
        entry = {str(lv): {k: per[lv].get(k, mean_std([])) for k in ("acc_mean", "pref_mean", f"pref:{noisy_client}")}
                 for lv in per}
        drop = {k: per[top][k]["mean"] - per[0.0][k]["mean"] if 0.0 in per and top in per else NAN
                for k in ("acc_mean", "pref_mean")}
        out["methods"][m] = {"levels": entry, "drop": drop}
        if weights:
            out["methods"][m]["noisy_weight"] = {str(lv): weights[lv][m] for lv in sorted(weights) if m in weights[lv]}
    return out


def first_improvement(track: list[dict[str, Any]], client: str, after: int, margin: float) -> int | None:
    """Steps after ``after`` until ``client``'s preference first exceeds its value at ``after`` by ``margin``."""
    base = next((t["client_preference"][client] for t in track if t["step"] == after), None)
    if base is None:
        return None
    return next((t["step"] - after for t in track if t["step"] > after and t["client_preference"][client] > base + margin),
                None)


def adaptability(join: dict[int, dict[str, Any]], control: dict[int, dict[str, Any]], client: str,
                 others: Sequence[str], benchmark: str, join_step: int, margin: float) -> dict[str, Any]:
    """How fast the joined client's preference rises, what happens to accuracy on its home ``benchmark``,
    and what joining does to the others, each against the control run of the same seed. At-join values
    and steps to improve come from the in-run track (a small test subset); end values from each run's
    final evaluation (the table's eval_examples per benchmark, the same examples for both runs)."""
    seeds: dict[int, Any] = {}

    def final(run: dict[str, Any]) -> tuple[dict[str, float], float]:
        return run["eval"]["client_preference"], run["eval"]["benchmarks"][benchmark]["vqa_accuracy"]

    for s in sorted(set(join) & set(control)):
        jt, ct = join[s]["track"], control[s]["track"]
        at = next(t for t in jt if t["step"] == join_step)
        (pref, acc), (cpref, cacc) = final(join[s]), final(control[s])
        seeds[s] = {
            "steps_to_improve": first_improvement(jt, client, join_step, margin),
            "steps_to_improve_control": first_improvement(ct, client, join_step, margin),
            "client_at_join": at["client_preference"][client], "client_end": pref[client],
            "client_end_control": cpref[client],
            "domain_acc_at_join": at["vqa_accuracy"][benchmark], "domain_acc_end": acc, "domain_acc_end_control": cacc,
            "others_at_join": fmean(at["client_preference"][o] for o in others),
            "others_end": fmean(pref[o] for o in others),
            "others_end_control": fmean(cpref[o] for o in others),
        }
    def agg(key: str) -> dict[str, float]:
        return mean_std(float(v[key]) for v in seeds.values() if v[key] is not None)
    summary = {k: agg(k) for k in ("client_end", "client_end_control", "others_end", "others_end_control",
                                     "client_at_join", "others_at_join", "domain_acc_at_join", "domain_acc_end",
                                     "domain_acc_end_control")}

    def gain(key: str) -> dict[str, float]:
        return mean_std(v[f"{key}_end"] - v[f"{key}_end_control"] for v in seeds.values())
    return {"client": client, "others": list(others), "benchmark": benchmark, "join_step": join_step, "margin": margin,
            "seeds": seeds, "summary": summary, "client_gain_vs_control": gain("client"),
            "others_change_vs_control": gain("others"), "domain_acc_gain_vs_control": gain("domain_acc"),
            "improved_in": sum(v["steps_to_improve"] is not None for v in seeds.values()), "n": len(seeds)}


__all__ = ["adaptability", "aggregate", "comparisons", "first_improvement", "generalisation", "mean_std", "metrics",
           "paired", "robustness", "router_weight", "runs_of", "table_rows"]
