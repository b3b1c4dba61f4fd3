"""The two reward-model baselines MoR is compared against (the table's central and fedavg rows), built
from the same pieces as services/reward_node/train.py.

    central = train_pooled_rm(settings, world_dir, clients)       # one RM on every client's pairs
    fedavg  = train_fedavg_rm(settings, world_dir, clients, rounds=R, local_epochs=E)

Centralised: the pairs of all clients are pooled into one node's data and trained exactly as a
client trains its own RM (reward_node.train.train_rm). It breaks the privacy contract (raw preferences leave
the organisations) and is the upper bound of the comparison.

FedAvg ("share parameters"): every client starts each round from the same global RM, trains
``local_epochs`` of Bradley-Terry on its own pairs, and the server averages the parameters,
weighted by pair counts (McMahan et al., 2017); grounding on the clients' labelled examples, where
they have any, is federated the same way before the pair rounds. All clients must use one architecture, which is
why this baseline needs ``settings.model.kind`` for everybody (the light RM in the experiments).
The output standardisation is fitted from per-client (count, mean, M2) of the final model's raw
training scores, merged as sufficient statistics, so no score of an individual answer leaves a
client. The held-out accuracy reported is on the union of the clients' held-out pairs.

Both write an ordinary RM checkpoint that a reward node serves unchanged.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from services.common.config import ConfigError
from services.common.config.services import RewardNodeSettings
from services.common.text_encoder import get_encoder
from services.reward_node.checkpoint import save_checkpoint
from services.reward_node.data import SPLITS, NodeData, load_node_data
from services.reward_node.grounding import candidate_set, classify, ground
from services.reward_node.hybrid import parts_matrix
from services.reward_node.rm import RewardModel, build_rm
from services.reward_node.train import (
    TrainResult,
    fit,
    grounding_examples,
    grounding_options,
    held_out_metadata,
    pair_accuracy,
    prepare_pairs,
    raw_scores,
    train_rm,
)


def _interleave(lists: Sequence[Sequence]) -> list:
    """Round robin over the lists (then the rest of the longer ones), so a prefix of the pooled pairs
    (train.max_train_pairs) draws from every client alike."""
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def pooled_data(world_dir: str | Path, clients: Sequence[str], node_id: str) -> NodeData:
    """One NodeData holding the train and held-out pairs of every client in ``clients``, interleaved."""
    if not clients:
        raise ConfigError("clients: pooling needs at least one client")
    parts = [load_node_data(world_dir, c) for c in clients]
    roots = {p.image_root.resolve() for p in parts}
    if len(roots) != 1:
        raise ConfigError(f"clients: their pairs come from different worlds ({', '.join(map(str, roots))})")
    digest = hashlib.sha256("".join(p.data_sha256 for p in parts).encode()).hexdigest()
    pairs = {s: _interleave([p.pairs[s] for p in parts]) for s in SPLITS}
    labelled = _interleave([p.labelled for p in parts])
    return NodeData(node_id, pairs, parts[0].image_root, digest, {"pooled_from": list(clients)}, labelled)


def train_pooled_rm(settings: RewardNodeSettings, world_dir: str | Path, clients: Sequence[str],
                    out_dir: str | Path | None = None) -> TrainResult:
    """The centralised RM: train_rm on the pooled pairs of ``clients`` (node id = settings.node_id)."""
    return train_rm(settings, data=pooled_data(world_dir, clients, settings.node_id), out_dir=out_dir)


def average_states(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts with the same keys; non-float tensors are taken from the first."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need as many weights as states, got {len(states)} and {len(weights)}")
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def merge_moments(moments: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """(mean, population std) of the union of sets given as (count, mean, M2 = sum of squared deviations)."""
    n = sum(c for c, _, _ in moments)
    if n == 0:
        raise ValueError("no scores to standardise on")
    mean = sum(c * m for c, m, _ in moments) / n
    m2 = sum(q + c * (m - mean) ** 2 for c, m, q in moments)
    return mean, math.sqrt(m2 / n)


def _fedavg_grounding(model: RewardModel, datas: Sequence[NodeData], settings: RewardNodeSettings,
                      rounds: int) -> dict[str, object]:
    """Grounding the FedAvg way: each round every client grounds the global RM on its own labelled
    examples for grounding_epochs / rounds epochs (after classify_epochs / rounds of its classifier stage,
    with its own answer head), and the server averages (weighted by examples)."""
    cfg = settings.train
    examples = [grounding_examples(d, cfg) for d in datas]
    sets = [candidate_set(ex, cfg.seed) for ex in examples]
    counts = [g.n_examples for g in sets]
    if cfg.grounding_epochs == 0 or sum(counts) == 0:
        return {"examples": 0, "epochs": 0}
    local = max(1, math.ceil(cfg.grounding_epochs / rounds))
    local_classify = math.ceil(cfg.classify_epochs / rounds)
    for r in range(rounds):
        global_state = copy.deepcopy(model.state_dict())
        states, weights = [], []
        for i, (gset, d) in enumerate(zip(sets, datas, strict=True)):
            if gset.n_examples == 0:
                continue
            model.load_state_dict(global_state)
            opts = grounding_options(cfg, cfg.seed + 1000 * r + i)
            classify(model, examples[i], d.image, epochs=local_classify, **opts)  # a fresh answer head each round
            ground(model, gset, d.image, epochs=local, **opts)
            states.append(copy.deepcopy(model.state_dict()))
            weights.append(gset.n_examples)
        model.load_state_dict(average_states(states, weights))
    return {"examples": sum(counts), "rounds": rounds, "local_epochs": local, "local_classify_epochs": local_classify,
            "lr": cfg.grounding_lr}


def train_fedavg_rm(settings: RewardNodeSettings, world_dir: str | Path, clients: Sequence[str], *,
                    rounds: int, local_epochs: int, out_dir: str | Path | None = None) -> TrainResult:
    """FedAvg of one RM architecture over ``clients``; see the module docstring."""
    out = Path(out_dir) if out_dir is not None else settings.model.checkpoint
    if out is None:
        raise ConfigError("model.checkpoint: where to write the FedAvg RM is not set")
    if rounds < 1 or local_epochs < 1:
        raise ConfigError(f"rounds and local_epochs must be >= 1 (got {rounds}, {local_epochs})")
    cfg = settings.train
    if settings.model.torch_threads:
        torch.set_num_threads(settings.model.torch_threads)
    t0 = time.perf_counter()
    datas = [load_node_data(world_dir, c) for c in clients]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_rm(settings.model)  # the common initialisation every client starts from
        train_pairs = [d.pairs["train"][: cfg.max_train_pairs] if cfg.max_train_pairs else d.pairs["train"]
                       for d in datas]
        prepared = [prepare_pairs(model, d, p) for d, p in zip(datas, train_pairs, strict=True)]
        counts = [len(p) for p in train_pairs]
        grounding = _fedavg_grounding(model, datas, settings, rounds)
        history = []
        for r in range(rounds):
            global_state = copy.deepcopy(model.state_dict())
            states, losses = [], []
            for i, (prep, n) in enumerate(zip(prepared, counts, strict=True)):
                model.load_state_dict(global_state)
                loss = fit(model, prep, n, epochs=local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                           weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                           max_grad_norm=cfg.max_grad_norm, seed=cfg.seed + 1000 * r + i)
                states.append(copy.deepcopy(model.state_dict()))
                losses.append(loss[-1])
            model.load_state_dict(average_states(states, counts))
            history.append(sum(ls * n for ls, n in zip(losses, counts, strict=True)) / sum(counts))
    model.eval()

    # Each client reports (count, mean, M2) of its raw training scores; the server merges them.
    raw = [raw_scores(model, p) for p in prepared]
    shift, scale = merge_moments([(int(r.numel()), float(r.mean()), float(((r - r.mean()) ** 2).sum())) for r in raw])
    with torch.no_grad():
        model.out_shift.fill_(shift)
        model.out_scale.fill_(max(scale, 1e-6))
    test_pairs = [p for d in datas for p in d.pairs["test"]]
    pooled_test = NodeData(settings.node_id, {"train": [], "test": test_pairs}, datas[0].image_root, "")
    test_scores = (raw_scores(model, prepare_pairs(model, pooled_test, test_pairs)) - shift) / model.out_scale
    train_acc = [pair_accuracy((r[:n] - shift), (r[n:] - shift)) for r, n in zip(raw, counts, strict=True)]
    n_te = len(test_pairs)
    responses = [p.chosen for p in test_pairs] + [p.rejected for p in test_pairs]
    parts = parts_matrix(test_scores, responses, settings.model.length_budget_words)
    prototype = get_encoder().encode([p.question for ps in train_pairs for p in ps]).mean(0)
    seconds = time.perf_counter() - t0
    metadata = {
        "node_id": settings.node_id,
        "data": {"sha256": hashlib.sha256("".join(d.data_sha256 for d in datas).encode()).hexdigest(),
                 "n_train_pairs": sum(counts), "n_held_out_pairs": n_te, "clients": list(clients)},
        "training": {
            "objective": "bradley_terry_fedavg", "rounds": rounds, "local_epochs": local_epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "seconds": round(seconds, 2), "loss_per_round": [round(x, 5) for x in history],
        },
        "grounding": grounding,
        "train_accuracy": sum(a * n for a, n in zip(train_acc, counts, strict=True)) / sum(counts),
        **held_out_metadata(test_scores, n_te, parts, settings, prototype),
    }
    meta = save_checkpoint(model, out, metadata, prototype)
    return TrainResult(out, meta, seconds, model)


__all__ = ["average_states", "merge_moments", "pooled_data", "train_fedavg_rm", "train_pooled_rm"]
