"""What `mor orchestrator run` shows: a progress bar, one fixed-width row per step, a closing table."""
from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from services.orchestrator.records import StepRecord

_COLS = (("step", 5), ("reward", 7), ("fused", 7), ("acc", 5), ("kl", 7), ("loss", 8), ("clip", 5),
         ("0-std", 5), ("tok", 5), ("sec", 6))


def _f(v: float, width: int, digits: int = 3) -> str:
    return ("nan" if math.isnan(v) else f"{v:.{digits}f}").rjust(width)


def header(node_ids: Sequence[str]) -> str:
    return " ".join(name.rjust(w) for name, w in _COLS) + "  " + " ".join(f"w[{n}]".rjust(9) for n in node_ids)


def row(r: StepRecord) -> str:
    cells = [str(r.step).rjust(5), _f(r.reward_mean, 7), _f(r.fused_reward_mean, 7), _f(r.accuracy_mean, 5, 2),
             _f(r.kl, 7, 4), _f(r.loss, 8, 4), _f(r.clip_low + r.clip_high, 5, 2),
             _f(r.zero_std_group_fraction, 5, 2), _f(r.completion_tokens_mean, 5, 1), _f(r.phases.get("total", 0.0), 6, 2)]
    weights = [("  --" if not n.responded else f"{n.weight_mean:.2f}").rjust(9) for n in r.nodes]
    return " ".join(cells) + "  " + " ".join(weights)


def progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def summary(records: Sequence[StepRecord], title: str = "MoR run") -> Table:
    """First and last steps side by side, with per-node router weights."""
    table = Table(title=title)
    for col in ("", "first step", "last step"):
        table.add_column(col, justify="right")
    if not records:
        return table
    a, b = records[0], records[-1]
    for label, attr in (("reward", "reward_mean"), ("fused RM reward", "fused_reward_mean"),
                        ("rule reward", "rule_reward_mean"), ("sampled accuracy", "accuracy_mean"),
                        ("KL to reference", "kl"), ("loss", "loss")):
        table.add_row(label, _f(getattr(a, attr), 0, 4).strip(), _f(getattr(b, attr), 0, 4).strip())
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        table.add_row(f"weight {na.node_id}", f"{na.weight_mean:.3f}", f"{nb.weight_mean:.3f}")
    table.caption = f"{len(records)} steps, policy version {b.policy_version}"
    return table


__all__ = ["header", "progress", "row", "summary"]
