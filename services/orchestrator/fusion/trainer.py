"""The router's own small trainer: Bradley-Terry on the server's router pairs, beside ``LogitRouter``,
the routers it trains (their ``fit`` runs it).

For pair p (prompt x_p, chosen answer c, rejected answer j) every node k gives calibrated scores
z_k(c), z_k(j). The router's fused margin is m_p = sum_k w_k(x_p) (z_k(c) - z_k(j)), with w a
softmax over the nodes that scored *both* answers of the pair, and the loss is -log sigmoid(m_p)
averaged over pairs. Only the router learns: node scores are fixed inputs (the nodes' models
never see a gradient, and never leave their organisation).

Full-batch AdamW for ``steps`` steps (the router pairs are a few hundred), seeded
train/held-out split, no randomness besides it: the same data and seed give the same router.
Accuracy counts a pair right when m_p > 0 and half right on a tie (m_p == 0, e.g. a pair no node
could score), so an uninformative router reads 0.5, not 0.

``score_router_pairs`` builds the training set: each router pair is sent through the
fan-out as one group of two answers (chosen, rejected), so only the prompt, its image, the answers
and the scores cross an organisation's boundary. The scores are calibrated with the statistics as
they stand (warm start from the nodes' Info) and do not update them: router-pair answers are not
policy samples, and the running statistics are there to follow the policy's answers.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from services.common import metrics
from services.orchestrator.fusion import ops
from services.orchestrator.fusion.base import Router, ScoredRouterPairs

if TYPE_CHECKING:
    from services.common.config.run import RouterSection
    from services.common.data import PreferencePair
    from services.common.data.sources import ImageSource
    from services.orchestrator.calibration import NodeCalibration
    from services.orchestrator.embedding import PromptEmbedder
    from services.orchestrator.fanout import RewardFanout


class LogitRouter(Router):
    """A router whose weights are a masked softmax of a torch module's per-node logits.

    ``net`` maps features[P, D] to logits[P, K]. Subclasses build ``net``; training, state and
    weights are shared here so the static and the input-conditioned router differ only in the
    module.
    """

    net: torch.nn.Module
    trainable = True

    def __init__(self, node_ids: Sequence[str], *, train_steps: int, lr: float, weight_decay: float,
                 holdout_fraction: float, seed: int) -> None:
        super().__init__(node_ids)
        self.train_steps = train_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.holdout_fraction = holdout_fraction
        self.seed = seed

    @staticmethod
    def train_args(cfg: RouterSection, seed: int) -> dict[str, float | int]:
        """The Bradley-Terry settings every logit router takes from the router section."""
        return {"train_steps": cfg.train_steps, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                "holdout_fraction": cfg.holdout_fraction, "seed": seed}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features[P, D] -> logits[P, K] (with gradients)."""
        return self.net(features)

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ops.masked_softmax(self.logits(features.float()), available)

    def fit(self, data: ScoredRouterPairs) -> dict[str, float]:
        return train_bradley_terry(
            self, data, steps=self.train_steps, lr=self.lr, weight_decay=self.weight_decay,
            holdout_fraction=self.holdout_fraction, seed=self.seed,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "net": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.net.load_state_dict(state["net"])


def split_pairs(n: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, held-out index) of a seeded permutation; at least one training pair when n > 0."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = min(int(round(n * holdout_fraction)), max(n - 1, 0))
    return perm[n_held:], perm[:n_held]


def bt_loss(margin: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of margins[P] (mean; 0 for no pairs)."""
    if margin.numel() == 0:
        return margin.sum()
    return -torch.nn.functional.logsigmoid(margin).mean()


def pair_credit(margin: torch.Tensor) -> torch.Tensor:
    """Per-pair credit of fused margins: 1 right (margin > 0), 0 wrong, one half for a tie."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


def pair_accuracy(margin: torch.Tensor) -> float:
    """Share of pairs with margin > 0, ties counting one half (NaN for no pairs): the mean pair credit."""
    if margin.numel() == 0:
        return float("nan")
    return float(pair_credit(margin).mean())


def logit_margin(logits: torch.Tensor, data: ScoredRouterPairs) -> torch.Tensor:
    """Fused margins[P] of router logits[P, K] on ``data``: softmax over the nodes that scored the pair."""
    w = ops.masked_softmax(logits, data.mask.T)
    return ops.pair_margin(w, data.z_chosen.float(), data.z_rejected.float(), data.mask)


def router_margin(router: LogitRouter, data: ScoredRouterPairs) -> torch.Tensor:
    """Fused margins[P] of the router on ``data`` (differentiable in the router's parameters)."""
    return logit_margin(router.logits(data.features.float()), data)


def fused_pair_margin(router: Router, data: ScoredRouterPairs) -> torch.Tensor:
    """Margins[P] of any router (fixed, learned, per-response like min/max): each pair is fused as
    a group of two answers to its prompt, exactly as a rollout group is; 0 where no node scored
    both answers (a tie). For a LogitRouter this equals ``router_margin``."""
    k, p = data.z_chosen.shape
    z = torch.stack([data.z_chosen, data.z_rejected], dim=2).reshape(k, 2 * p).float()
    mask = data.mask.repeat_interleave(2, dim=1)
    with torch.no_grad():
        r, _ = router.fuse(z, mask, torch.arange(p).repeat_interleave(2), data.features.float())
    return (r[0::2] - r[1::2]).nan_to_num(0.0)


def train_bradley_terry(
    router: LogitRouter,
    data: ScoredRouterPairs,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    holdout_fraction: float,
    seed: int,
) -> dict[str, float]:
    """Train ``router.net`` in place; returns losses and pair accuracies before/after on both splits.

    Keys: train_pairs, heldout_pairs, train_loss, train_accuracy, heldout_loss, heldout_accuracy,
    initial_train_accuracy, initial_heldout_accuracy, heldout_mean_accuracy (the uniform mean of the
    nodes on the same held-out pairs: the bar a learned router has to clear); held-out figures are
    NaN with no held-out pair.
    """
    if data.z_chosen.shape[0] != router.k:
        raise ValueError(f"the router pairs have scores of {data.z_chosen.shape[0]} nodes, the router {router.k}")
    train_idx, held_idx = split_pairs(data.n_pairs, holdout_fraction, seed)
    train, held = data.subset(train_idx), data.subset(held_idx)

    def evaluate(part: ScoredRouterPairs) -> tuple[float, float]:
        with torch.no_grad():
            m = router_margin(router, part)
        return float(bt_loss(m)) if m.numel() else float("nan"), pair_accuracy(m)

    _, init_train_acc = evaluate(train)
    _, init_held_acc = evaluate(held)
    held_mean_acc = pair_accuracy(logit_margin(torch.zeros(held.n_pairs, router.k), held))
    params = [p for p in router.net.parameters() if p.requires_grad]
    if steps > 0 and train.n_pairs > 0 and params:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        router.net.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = bt_loss(router_margin(router, train))
            loss.backward()
            opt.step()
        router.net.eval()
    train_loss, train_acc = evaluate(train)
    held_loss, held_acc = evaluate(held)
    if held.n_pairs:
        metrics.ORCHESTRATOR_ROUTER_ACCURACY.set(held_acc)
    return {
        "train_pairs": float(train.n_pairs),
        "heldout_pairs": float(held.n_pairs),
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "heldout_loss": held_loss,
        "heldout_accuracy": held_acc,
        "initial_train_accuracy": init_train_acc,
        "initial_heldout_accuracy": init_held_acc,
        "heldout_mean_accuracy": held_mean_acc,
    }


def _mime(path: str) -> str:
    return "image/jpeg" if path.lower().endswith((".jpg", ".jpeg")) else "image/png"


async def score_router_pairs(
    fanout: RewardFanout,
    calibration: NodeCalibration,
    embedder: PromptEmbedder,
    pairs: Sequence[PreferencePair],
    world: ImageSource,
    *,
    pairs_per_round: int = 64,
) -> ScoredRouterPairs:
    """Score router pairs on every node (see the module docstring) -> ScoredRouterPairs
    in the fan-out's node order. ``pairs_per_round`` pairs go out per fan-out round, so each round
    fits the step deadline. A node dropped in a round is masked for that round's pairs; a round
    without quorum raises the fan-out's QuorumError."""
    # Imported here, not at module level: the fan-out is the gRPC side, and the fusion package
    # stays importable without it.
    from services.reward_node.client import ScoreGroup

    if not pairs:
        raise ValueError("score_router_pairs needs at least one preference pair")
    node_ids = fanout.node_ids
    scores, masks = [], []
    for start in range(0, len(pairs), pairs_per_round):
        part = pairs[start : start + pairs_per_round]
        groups = [ScoreGroup(prompt=p.question, responses=[p.chosen, p.rejected], image=world.image_bytes(p.image),
                             mime_type=_mime(p.image), group_id=p.id) for p in part]
        result = await fanout.score(groups, request_id=f"router-pairs-{start}")
        if result.node_ids != node_ids:
            raise RuntimeError("the fan-out's nodes changed while scoring the router pairs")
        scores.append(result.scores)
        masks.append(result.mask)
    raw, mask = torch.cat(scores, dim=1), torch.cat(masks, dim=1)  # [K, 2P]: chosen, rejected, chosen, ...
    z = calibration.calibrate(raw, mask, node_ids)

    def embed() -> Any:  # MiniLM and image decoding are CPU work: keep them off the event loop
        return embedder.embed([p.question for p in pairs], [world.load_image(p.image) for p in pairs])

    features = await asyncio.to_thread(embed)
    return ScoredRouterPairs(features, z[:, 0::2], z[:, 1::2], mask[:, 0::2] & mask[:, 1::2])


__all__ = ["LogitRouter", "bt_loss", "fused_pair_margin", "pair_accuracy", "pair_credit", "router_margin", "score_router_pairs",
           "split_pairs", "train_bradley_terry"]
