"""Local, private RM training: Bradley-Terry on the node's own preference pairs.

    loss = -mean log sigmoid(s(x, chosen) - s(x, rejected))

AdamW with linear warm-up and cosine decay, gradient clipping, seeded. After the last epoch the
output map is fixed so scores have mean 0 and std 1 on the training answers, then the held-out
pairs (the client's test split, never seen in training) give the pair accuracy, the score
statistics and the mean/covariance of the hybrid parts. The checkpoint (services.reward_node.
checkpoint) keeps weights and aggregate numbers only, never a prompt, answer or label.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.common.config import ConfigError
from services.common.config.services import RewardNodeSettings
from services.common.data.records import PreferencePair
from services.common.text_encoder import EMBEDDER, get_encoder
from services.reward_node.checkpoint import save_checkpoint
from services.reward_node.data import NodeData, load_node_data
from services.reward_node.grounding import candidate_set, classify, ground, reads_with_question
from services.reward_node.hybrid import PART_NAMES, part_stats, parts_matrix
from services.reward_node.optim import train_loop
from services.reward_node.rm import Prepared, RewardModel, build_rm

EVAL_BATCH = 64


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced: where the checkpoint is and its metadata."""

    checkpoint: Path
    metadata: dict[str, Any]
    seconds: float
    model: RewardModel  # the trained RM in memory, in its saved (serving) form

    @property
    def held_out_accuracy(self) -> float:
        return float(self.metadata["held_out_accuracy"])


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, mean over pairs: chosen[B], rejected[B] -> scalar."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs scored in the labelled order: chosen[P], rejected[P]; a tie counts one half."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    return float(wins.mean())


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def prepare_pairs(model: RewardModel, data: NodeData, pairs: Sequence[PreferencePair]) -> Prepared:
    """Prepared inputs of 2P samples: every pair's chosen answer (rows 0..P-1), then its rejected one."""
    prompts = [p.question for p in pairs] * 2
    images = [data.image(p.image) for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return model.prepare(prompts, images, responses)


@torch.no_grad()
def raw_scores(model: RewardModel, prepared: Prepared, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Unstandardised scores[N] of prepared samples in eval mode."""
    was = model.training
    model.eval()
    try:
        out = [model.raw_scores(prepared.select(range(s, min(s + batch_size, len(prepared)))))
               for s in range(0, len(prepared), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out).float() if out else torch.zeros(0)


def fit(
    model: RewardModel,
    prepared: Prepared,
    n_pairs: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    max_grad_norm: float,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Bradley-Terry training on prepared pairs (layout of ``prepare_pairs``); mean loss per epoch."""

    def batch_loss(b: list[int]) -> torch.Tensor:
        scores = model(prepared.select(b + [n_pairs + i for i in b]))
        return bt_loss(scores[: len(b)], scores[len(b) :])

    warmup = int(warmup_ratio * epochs * math.ceil(n_pairs / batch_size))
    return train_loop(model, batch_loss, n_pairs, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                      schedule=lambda s, total: lr_factor(s, total, warmup), on_step=on_step)


def accuracy_by(pairs: Sequence[PreferencePair], chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, Any]:
    """Pair accuracy (and count) by pair kind, by benchmark, and by benchmark within each kind:
    an expert's correctness pairs at home and elsewhere are the numbers routing depends on."""
    groups: dict[str, dict[str, list[int]]] = {"kind": {}, "benchmark": {}, "kind_benchmark": {}}
    for i, p in enumerate(pairs):
        kind = p.kind or "unknown"
        groups["kind"].setdefault(kind, []).append(i)
        groups["benchmark"].setdefault(p.benchmark, []).append(i)
        groups["kind_benchmark"].setdefault(f"{kind}/{p.benchmark}", []).append(i)
    return {
        name: {key: {"accuracy": pair_accuracy(chosen[idx], rejected[idx]), "pairs": len(idx)}
               for key, idx in sorted(by.items())}
        for name, by in groups.items()
    }


def grounding_examples(data: NodeData, cfg: Any) -> list[Any]:
    """The labelled examples grounding uses (at most train.max_labelled)."""
    return data.labelled[: cfg.max_labelled] if cfg.max_labelled else data.labelled


def grounding_options(cfg: Any, seed: int) -> dict[str, Any]:
    """The optimiser settings the classifier and grounding stages share (``cfg``: the node's train section)."""
    return {"batch_size": cfg.batch_size, "lr": cfg.grounding_lr, "weight_decay": cfg.weight_decay,
            "max_grad_norm": cfg.max_grad_norm, "seed": seed}


def _ground(model: RewardModel, data: NodeData, settings: RewardNodeSettings, progress: bool) -> dict[str, Any]:
    """The grounding stage on the node's labelled examples (module grounding); its report."""
    cfg = settings.train
    examples = grounding_examples(data, cfg)
    if not examples or cfg.grounding_epochs == 0:
        return {"examples": 0, "epochs": 0}
    t0 = time.perf_counter()
    gset = candidate_set(examples, cfg.seed)
    classify_epochs = cfg.classify_epochs if reads_with_question(model) else 0
    total = (classify_epochs * math.ceil(len(examples) / cfg.batch_size)
             + cfg.grounding_epochs * math.ceil(gset.n_examples / cfg.batch_size))
    opts = grounding_options(cfg, cfg.seed)
    with _progress(progress, f"ground {settings.node_id} on {gset.n_examples} labelled examples", total) as advance:
        classified = classify(model, examples, data.image, epochs=classify_epochs, on_step=advance, **opts)
        t1 = time.perf_counter()
        history = ground(model, gset, data.image, epochs=cfg.grounding_epochs, on_step=advance, **opts)
    return {"examples": gset.n_examples, "candidates": len(gset.responses), "epochs": cfg.grounding_epochs,
            "lr": cfg.grounding_lr, "seconds": round(time.perf_counter() - t0, 2),
            "loss_per_epoch": [round(x, 5) for x in history],
            "classify": {"epochs": classify_epochs, "seconds": round(t1 - t0, 2),
                         "loss_per_epoch": [round(x, 5) for x in classified]}}


def held_out_metadata(test_scores: torch.Tensor, n_te: int, parts: Any, settings: RewardNodeSettings,
                      prototype: torch.Tensor) -> dict[str, Any]:
    """The checkpoint metadata read off the held-out scores (chosen first, then rejected): pair
    accuracy, the score statistics GetInfo publishes, rule-part statistics and the prototype's description."""
    return {
        "held_out_accuracy": pair_accuracy(test_scores[:n_te], test_scores[n_te:]),
        "score_mean": float(test_scores.mean()),
        "score_std": float(test_scores.std(unbiased=False)),
        "score_min": float(test_scores.min()),
        "score_max": float(test_scores.max()),
        "parts": {**part_stats(parts), "length_budget_words": settings.model.length_budget_words},
        "prototype": {"embedder": EMBEDDER, "dim": int(prototype.numel()), "source": "mean of training prompt embeddings"},
    }


def train_rm(
    settings: RewardNodeSettings,
    *,
    data: NodeData | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train the node's RM on its own pairs and write the checkpoint (``out_dir`` or model.checkpoint)."""
    out = Path(out_dir) if out_dir is not None else settings.model.checkpoint
    if out is None:
        raise ConfigError("model.checkpoint: where to write the trained RM is not set")
    if data is None:
        if settings.data_dir is None:
            raise ConfigError("data_dir: the node's preference data folder is not set")
        data = load_node_data(settings.data_dir, settings.node_id, settings.train.held_out_fraction, settings.train.seed)
    cfg = settings.train
    if settings.model.torch_threads:
        torch.set_num_threads(settings.model.torch_threads)
    t0 = time.perf_counter()
    train_pairs = data.pairs["train"][: cfg.max_train_pairs] if cfg.max_train_pairs else data.pairs["train"]
    test_pairs = data.pairs["test"]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_rm(settings.model)
        grounding = _ground(model, data, settings, progress)
        prep_train = prepare_pairs(model, data, train_pairs)
        prep_test = prepare_pairs(model, data, test_pairs)
        total = cfg.epochs * math.ceil(len(train_pairs) / cfg.batch_size)
        with _progress(progress, f"train {settings.node_id} ({model.kind} RM)", total) as advance:
            history = fit(
                model, prep_train, len(train_pairs), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm,
                seed=cfg.seed, on_step=advance,
            )

    raw_train = raw_scores(model, prep_train)
    model.standardise(raw_train)
    train_scores = (raw_train - model.out_shift) / model.out_scale
    test_scores = (raw_scores(model, prep_test) - model.out_shift) / model.out_scale
    n_tr, n_te = len(train_pairs), len(test_pairs)
    test_responses = [p.chosen for p in test_pairs] + [p.rejected for p in test_pairs]
    parts = parts_matrix(test_scores, test_responses, settings.model.length_budget_words)
    prototype = get_encoder().encode([p.question for p in train_pairs]).mean(0)
    seconds = time.perf_counter() - t0
    metadata = {
        "node_id": settings.node_id,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"sha256": data.data_sha256, "n_train_pairs": n_tr, "n_held_out_pairs": n_te},
        "training": {
            "objective": "bradley_terry",
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "seed": cfg.seed, "seconds": round(seconds, 2), "loss_per_epoch": [round(x, 5) for x in history],
        },
        "grounding": grounding,
        "train_accuracy": pair_accuracy(train_scores[:n_tr], train_scores[n_tr:]),
        **held_out_metadata(test_scores, n_te, parts, settings, prototype),
        "held_out_by": accuracy_by(test_pairs, test_scores[:n_te], test_scores[n_te:]),
        "software": _versions(),
    }
    assert list(PART_NAMES) == metadata["parts"]["names"]
    meta = save_checkpoint(model, out, metadata, prototype)
    return TrainResult(out, meta, seconds, model)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


class _progress:
    """Context giving an ``advance(step, loss)`` callback that drives a rich progress bar (or nothing)."""

    def __init__(self, enabled: bool, title: str, total: int) -> None:
        self.enabled, self.title, self.total = enabled, title, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int, float], None]:
        if not self.enabled:
            return lambda _step, _loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
        self._bar.start()
        task = self._bar.add_task(self.title, total=self.total, loss=float("nan"))
        return lambda _step, loss: self._bar.update(task, advance=1, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


__all__ = ["TrainResult", "accuracy_by", "bt_loss", "fit", "grounding_options", "lr_factor", "pair_accuracy", "prepare_pairs", "raw_scores", "train_rm"]
