"""Per-node score calibration: running mean/std of each node's raw scores -> z-scores.

Nodes score on their own scales (a Bradley-Terry RM is only defined up to a shift, and a noisy
node may be flat or wide); without calibration the node with the widest scale would dominate
any weighted sum. Each node k keeps (count n_k, mean m_k, sum of squared deviations M2_k):

  warm start   from the node's published score_mean / score_std (its training distribution) as
               ``prior_count`` pseudo-observations: n = prior_count, m = score_mean,
               M2 = prior_count * score_std^2. A node that publishes no std (0) starts empty.
  update       exact batch merge of the step's masked-in scores (Chan et al.'s parallel Welford:
               order-independent and exact in float64, unlike an EMA whose result depends on
               how the same scores were split into steps).
  window       if ``window`` > 0 and n exceeds it after a merge, n and M2 are scaled by
               window / n (mean unchanged): geometric forgetting with an effective memory of
               ``window`` scores, so z-scores follow the drift of the policy's answers.
               window = 0 keeps exact statistics of the whole run.
  calibrate    z = (s - m) / max(sqrt(M2 / n), std_floor) where mask is True; NaN elsewhere
               (missing is never 0). A node with n = 0 (no prior, no data yet) has m = 0, std = 1:
               its raw scores pass through unchanged until the first update.

Order within a step (the contract, see ``step``): calibrate with the statistics from *before*
the step, then update with the step's scores. A step's z-scores then do not depend on how good
or bad that step's own batch was (a batch of all-good answers is not normalised back to 0), and
a run resumed from a checkpoint written after step t's update calibrates step t+1 exactly as the
uninterrupted run would.

The variance is the population one (M2 / n): prior pseudo-counts are not real samples, and the
difference from n - 1 vanishes after a few steps. State is plain floats (JSON-able) so it can go
into the run checkpoint's run.json.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from services.common import metrics
from services.common.config.run import RouterSection

if TYPE_CHECKING:
    from services.reward_node.client import NodeInfo


@dataclass
class RunningStats:
    """count, mean and M2 (sum of squared deviations) of one node's raw scores."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def std(self, floor: float) -> float:
        if self.count <= 0:
            return 1.0
        return max(math.sqrt(max(self.m2, 0.0) / self.count), floor)

    def centre(self) -> float:
        return self.mean if self.count > 0 else 0.0

    def merge(self, values: torch.Tensor) -> None:
        """Merge a batch of values (Chan's parallel update, float64)."""
        b = int(values.numel())
        if b == 0:
            return
        v = values.double()
        b_mean = float(v.mean())
        b_m2 = float(((v - b_mean) ** 2).sum())
        n = self.count + b
        delta = b_mean - self.mean
        self.mean += delta * b / n
        self.m2 += b_m2 + delta * delta * self.count * b / n
        self.count = n

    def cap(self, window: float) -> None:
        if window > 0 and self.count > window:
            self.m2 *= window / self.count
            self.count = window


class NodeCalibration:
    """Running per-node statistics and z-scores; see the module docstring."""

    def __init__(
        self,
        node_ids: Sequence[str],
        infos: Mapping[str, NodeInfo] | None = None,
        cfg: RouterSection | None = None,
    ) -> None:
        """Statistics for ``node_ids`` (z-score rows follow this order), warm-started from ``infos``;
        prior count, window and std floor come from ``cfg`` (router.calibration_*; default: RouterSection())."""
        cfg = cfg or RouterSection()
        self.prior_count = float(cfg.calibration_prior_count)
        self.window = float(cfg.calibration_window)
        self.std_floor = float(cfg.calibration_std_floor)
        self.stats: dict[str, RunningStats] = {}
        for node in node_ids:
            self.add_node(node, (infos or {}).get(node))

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self.stats)

    def add_node(self, node_id: str, info: NodeInfo | None = None) -> None:
        """Start statistics for a node (warm-started from its Info); a known node is left as is."""
        if node_id in self.stats:
            return
        self.stats[node_id] = RunningStats()
        if info is not None:
            self.warm_start(node_id, info.score_mean, info.score_std)

    def warm_start(self, node_id: str, mean: float, std: float) -> None:
        """Replace a node's statistics by the prior (``prior_count`` pseudo-scores of ``mean``, ``std``)."""
        ok = self.prior_count > 0 and math.isfinite(mean) and math.isfinite(std) and std > 0
        self.stats[node_id] = RunningStats(self.prior_count, mean, self.prior_count * std * std) if ok else RunningStats()

    def remove_node(self, node_id: str) -> None:
        self.stats.pop(node_id, None)

    # ---- the two operations ---------------------------------------------------------------------
    def _rows(self, node_ids: Sequence[str] | None, k: int) -> list[RunningStats]:
        ids = self.node_ids if node_ids is None else tuple(node_ids)
        if len(ids) != k:
            raise ValueError(f"scores have {k} node rows, calibration is over {len(ids)} nodes")
        missing = [n for n in ids if n not in self.stats]
        if missing:
            raise KeyError(f"no calibration statistics for node(s) {', '.join(missing)}; add_node first")
        return [self.stats[n] for n in ids]

    def calibrate(self, scores: torch.Tensor, mask: torch.Tensor, node_ids: Sequence[str] | None = None) -> torch.Tensor:
        """scores[K, N] raw, mask[K, N] bool -> z[K, N] float32, NaN where mask is False.

        Rows follow ``node_ids`` (default: this calibration's node order)."""
        rows = self._rows(node_ids, scores.shape[0])
        mean = torch.tensor([r.centre() for r in rows], dtype=torch.float64)[:, None]
        std = torch.tensor([r.std(self.std_floor) for r in rows], dtype=torch.float64)[:, None]
        z = ((scores.double() - mean) / std).float()
        return torch.where(mask, z, torch.full_like(z, float("nan")))

    def update(self, scores: torch.Tensor, mask: torch.Tensor, node_ids: Sequence[str] | None = None) -> None:
        """Merge the masked-in (and finite) raw scores of each node into its running statistics."""
        ids = self.node_ids if node_ids is None else tuple(node_ids)
        for node, stats, s, m in zip(ids, self._rows(node_ids, scores.shape[0]), scores, mask, strict=True):
            stats.merge(s[m & torch.isfinite(s)])
            stats.cap(self.window)
            metrics.ORCHESTRATOR_NODE_CALIBRATION_MEAN.labels(node).set(stats.centre())
            metrics.ORCHESTRATOR_NODE_CALIBRATION_STD.labels(node).set(stats.std(self.std_floor))

    def step(self, scores: torch.Tensor, mask: torch.Tensor, node_ids: Sequence[str] | None = None) -> torch.Tensor:
        """One training step's calibration in the documented order: z from the old stats, then update."""
        z = self.calibrate(scores, mask, node_ids)
        self.update(scores, mask, node_ids)
        return z

    def mean_std(self, node_id: str) -> tuple[float, float]:
        """The (mean, std) a z-score of this node uses now."""
        s = self.stats[node_id]
        return s.centre(), s.std(self.std_floor)

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain floats and strings (JSON-able)."""
        return {
            "prior_count": self.prior_count,
            "window": self.window,
            "std_floor": self.std_floor,
            "nodes": {n: {"count": s.count, "mean": s.mean, "m2": s.m2} for n, s in self.stats.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics (and settings) saved by ``state_dict``; nodes missing from the state
        keep theirs, nodes only in the state are added."""
        self.prior_count = float(state["prior_count"])
        self.window = float(state["window"])
        self.std_floor = float(state["std_floor"])
        for node, s in state["nodes"].items():
            self.stats[node] = RunningStats(float(s["count"]), float(s["mean"]), float(s["m2"]))


__all__ = ["NodeCalibration", "RunningStats"]
