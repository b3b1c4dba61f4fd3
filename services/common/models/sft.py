"""Supervised warm start: teach a freshly built VLM to answer the world's questions.

Loss = mean next-token negative log-likelihood over the answer tokens and the closing eos (the
prompt and image tokens carry no loss). AdamW, linear warm-up then cosine/linear decay, global
grad-norm clipping. Every example is tokenised and its image preprocessed once, up front, so a
step costs only the forward/backward.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from services.common.data.answers import exact_match
from services.common.models import ops
from services.common.models.config import SFTConfig
from services.common.models.lora import add_lora, merged
from services.common.models.vlm import VLM

EvalFn = Callable[[VLM], Mapping[str, float]]


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: an image, a question about it, the reference answer."""

    image: Image.Image
    question: str
    answer: str


@dataclass
class SFTResult:
    """What a warm start did: loss curve, evaluations, timings."""

    steps: int
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last record)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, eval_fn output)
    seconds: float = 0.0
    step_time_s: float = 0.0  # mean wall time of one optimiser step (excludes evaluation)

    @property
    def last_eval(self) -> dict[str, float]:
        return self.evals[-1][1] if self.evals else {}


def lr_factor(step: int, cfg: SFTConfig) -> float:
    """Multiplier of cfg.lr at optimiser step ``step`` (0-based): warm-up, then the chosen decay."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup)
    frac = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - frac)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices, not biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None: every core this process may run on) inside the block;
    the numbers a CPU run computes depend on it, so a fixed ``n`` gives the same model on every machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def sft_train(
    vlm: VLM,
    train: Sequence[SFTExample],
    cfg: SFTConfig | None = None,
    eval_fn: EvalFn | None = None,
    progress: bool = True,
    pretrained: bool = False,
) -> SFTResult:
    """Fine-tune ``vlm`` on ``train``; returns the loss curve and evaluations.

    What trains and at which lr follow ``cfg.plan(pretrained)``: ``pretrained`` says ``vlm`` is a
    loaded checkpoint rather than a random init. A LoRA adapter is merged into the weights at the
    end, so ``vlm`` stays a plain model that saves as a full checkpoint. ``eval_fn(vlm)`` runs every
    ``cfg.eval_every`` steps and after the last one (model in eval mode, no grad). The model is
    left in eval mode.
    """
    cfg = cfg or SFTConfig()
    if not train:
        raise ValueError("sft_train needs at least one example")
    start = time.perf_counter()
    with cpu_threads(cfg.num_threads) if vlm.device.type == "cpu" else contextlib.nullcontext():
        mode, lr = cfg.plan(pretrained)
        if mode == "full":
            return _train(vlm, train, cfg, lr, eval_fn, progress, start)
        plain = vlm.model
        vlm.model = add_lora(plain, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                             target_modules=cfg.lora_target_modules, seed=cfg.seed)
        try:
            return _train(vlm, train, cfg, lr, eval_fn, progress, start)
        finally:
            vlm.model = merged(vlm.model)


def _train(
    vlm: VLM, train: Sequence[SFTExample], cfg: SFTConfig, lr: float, eval_fn: EvalFn | None, progress: bool,
    start: float,
) -> SFTResult:
    proc = vlm.processor
    encoded = [proc.encode(ex.question, ex.image, proc.answer_ids(ex.answer)) for ex in train]
    model = vlm.model
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    result = SFTResult(steps=cfg.steps, final_loss=float("nan"))
    window: list[float] = []
    train_time = 0.0

    def run_eval(step: int) -> None:
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in eval_fn(vlm).items()}
        result.evals.append((step, metrics))
        model.train()

    columns = (
        TextColumn("[bold]sft"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("sft", total=cfg.steps, loss=float("nan"), lr=lr)
        model.train()
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            if len(order) < cfg.batch_size:
                order.extend(torch.randperm(len(encoded), generator=gen).tolist())
            idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = proc.collate([encoded[i] for i in idx])
            logp = vlm.completion_logprobs(batch)
            loss = -ops.masked_mean(logp, batch.completion_mask.to(logp.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            train_time += time.perf_counter() - t0
            window.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                result.losses.append((step + 1, sum(window) / len(window)))
                window = []
            bar.update(task, advance=1, loss=loss.item(), lr=sched.get_last_lr()[0])
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                run_eval(step + 1)
    result.final_loss = result.losses[-1][1]
    result.step_time_s = train_time / cfg.steps
    run_eval(cfg.steps)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def greedy_accuracy(
    vlm: VLM, examples: Sequence[SFTExample], batch_size: int = 32, max_new_tokens: int = 8
) -> float:
    """Fraction of examples whose greedy answer is the reference (`data.answers.exact_match`)."""
    if not examples:
        return 0.0
    hits = 0.0
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        gens = vlm.generate(
            [e.question for e in chunk], [e.image for e in chunk], max_new_tokens=max_new_tokens, do_sample=False
        )
        hits += sum(exact_match(g[0].text, [e.answer]) for g, e in zip(gens, chunk, strict=True))
    return hits / len(examples)
