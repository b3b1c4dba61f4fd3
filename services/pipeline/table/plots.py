"""The PNG plots of the table (matplotlib, Agg backend: no display needed).

    curves.png          reward and KL per GRPO step, one line per method (mean over seeds, band = std)
    router_weights.png  mean router weight of each node on each benchmark's prompts (learned routers)
    accuracy_bars.png   VQA accuracy per benchmark and method, error bars = std over seeds
    robustness.png      mean accuracy and preference vs the share of flipped labels
    adaptability.png    the joining expert's preference and its home benchmark's accuracy, joined vs control
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from services.pipeline.table import summary as sm
from services.pipeline.table.profiles import Profile, method


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stack(series: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(s) for s in series)
    a = np.array([[v if v == v else np.nan for v in s[:n]] for s in series], dtype=float)
    return np.nanmean(a, 0), np.nanstd(a, 0)


def curves(p: Profile, jobs: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in p.methods:
        runs = [r["curves"] for r in sm.runs_of(jobs, "main", m) if r.get("curves")]
        if not runs:
            continue
        for ax, key in zip(axes, ("reward", "kl"), strict=True):
            mean, std = _stack([c[key] for c in runs])
            steps = np.arange(1, len(mean) + 1)
            ax.plot(steps, mean, label=method(m).label, lw=2 if m == "mor" else 1.2)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    axes[0].set(title="reward per step (mean over seeds; each method's own reward)", xlabel="GRPO step", ylabel="reward")
    axes[1].set(title="KL to the SFT start", xlabel="GRPO step", ylabel="k3 KL")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def router_weights(s: dict[str, Any], jobs: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    kinds = [m for m in ("mor", "static", "mor_norules")
             if any(r.get("router_domains") for r in sm.runs_of(jobs, "main", m))]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.8), squeeze=False)
    for ax, m in zip(axes[0], kinds, strict=False):
        maps = [r["router_domains"] for r in sm.runs_of(jobs, "main", m) if r.get("router_domains")]
        benches = sorted(maps[0])
        nodes = list(maps[0][benches[0]])
        grid = np.mean([[[mp[b][n] for n in nodes] for b in benches] for mp in maps], axis=0)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(nodes)), nodes)
        ax.set_yticks(range(len(benches)), benches)
        for i in range(len(benches)):
            for j in range(len(nodes)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
        ax.set_title(f"{method(m).label}\n(mean over {len(maps)} seed(s))", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if not kinds:
        axes[0][0].text(0.5, 0.5, "no learned router in this profile", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_bars(s: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = s["main"]["methods"]
    benches = sorted(k[4:] for k in next(iter(rows.values()))["agg"] if k.startswith("acc:"))
    cols = [*benches, "mean"]
    width = 0.8 / max(1, len(rows))
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours: one per method, none repeated
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(cols) * len(rows)) + 3, 4.5))
    for i, (m, row) in enumerate(rows.items()):
        stats = [row["agg"].get(f"acc:{b}" if b != "mean" else "acc_mean", {}) for b in cols]
        mean = [st.get("mean", math.nan) for st in stats]
        std = [st.get("std", 0.0) for st in stats]
        ax.bar(np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
               label=row["label"], color=colours[i % len(colours)], edgecolor="k" if m == "mor" else None)
    ax.set_xticks(range(len(cols)), cols)
    ax.set(ylabel="VQA accuracy (held-out split)", title="accuracy per benchmark, error bars = std over seeds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def robustness(s: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rb = s["robustness"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m, row in rb["methods"].items():
        xs = [x for x in rb["levels"] if str(x) in row["levels"]]
        for ax, key in zip(axes, ("acc_mean", "pref_mean"), strict=True):
            mean = [row["levels"][str(x)][key]["mean"] for x in xs]
            std = [row["levels"][str(x)][key]["std"] for x in xs]
            ax.errorbar([100 * x for x in xs], mean, yerr=std, marker="o", capsize=3, label=method(m).label)
    axes[0].set(xlabel=f"% of {rb['noisy_client']}'s labels flipped", ylabel="mean VQA accuracy")
    axes[1].set(xlabel=f"% of {rb['noisy_client']}'s labels flipped", ylabel="mean client preference")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adaptability(s: dict[str, Any], jobs: dict[str, dict[str, Any]], path: Path) -> None:
    """Left: the joiner's and the other clients' oracle preference; right: accuracy on the joiner's home
    benchmark; joined (solid) vs control (dashed), mean over seeds."""
    plt = _plt()
    ad = s["adaptability"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if ad:
        b = ad["benchmark"]
        for scenario, style in (("adapt", "-"), ("adapt_control", "--")):
            tracks = [r["track"] for r in jobs.values() if r["spec"]["job"]["scenario"] == scenario and r.get("track")]
            if not tracks:
                continue
            steps = [t["step"] for t in tracks[0]]
            run = "joined" if scenario == "adapt" else "control"
            series = [
                (axes[0], f"{ad['client']}, {run}", "C3", lambda t: t["client_preference"][ad["client"]]),
                (axes[0], f"other clients (mean), {run}", "C0",
                 lambda t: float(np.mean([t["client_preference"][o] for o in ad["others"]]))),
                (axes[1], f"{b}, {run}", "C3", lambda t: t["vqa_accuracy"][b]),
            ]
            for ax, label, colour, value in series:
                mean, _ = _stack([[value(t) for t in tr] for tr in tracks])
                ax.plot(steps[: len(mean)], mean, style, color=colour, marker="o", ms=3, label=label)
        for ax, ylabel in zip(axes, ("oracle preference (greedy, test subset)", f"VQA accuracy on {b} (test subset)"),
                              strict=True):
            ax.axvline(ad["join_step"], color="grey", lw=0.8)
            ax.set(xlabel="GRPO step", ylabel=ylabel)
            ax.legend(fontsize=8)
        fig.suptitle(f"{ad['client']} (the {b} expert) joins after step {ad['join_step']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(p: Profile, s: dict[str, Any], jobs: dict[str, dict[str, Any]], context: dict[str, Any],
               out: Path) -> dict[str, str]:
    """Write every plot into ``out``; returns name -> file name."""
    files = {name: f"{name}.png" for name in ("curves", "router_weights", "accuracy_bars", "robustness", "adaptability")}
    curves(p, jobs, out / files["curves"])
    router_weights(s, jobs, out / files["router_weights"])
    accuracy_bars(s, out / files["accuracy_bars"])
    robustness(s, out / files["robustness"])
    adaptability(s, jobs, out / files["adaptability"])
    return files


__all__ = ["make_plots"]
