"""Stage-1 warm-up of a randomly initialised vision tower, before supervised fine-tuning.

Why: a VLM built from random weights has a chicken-and-egg problem. The language model learns the
answer prior and the format within a few hundred steps and then has little reason to read image
tokens that carry no information yet, while the vision tower only gets gradient through the LM's
(still diffuse) attention. Measured on the synthetic world: 1500 SFT steps of the small preset stay at
the blind prior on every benchmark. Supervising the tower directly breaks the loop: a small
VQA classifier (pooled image tokens + bag of question tokens -> answer class) trains the tower
and projector in cheap steps, and SFT then starts from informative image tokens. How many matters:
with the small preset on the default world, 400 warm-up steps before 800 SFT steps left digits at
the blind prior (exact match 0.305, the LM answered from the question alone), 1500 reached 0.56
(charts 0.43 -> 0.485, shapes 0.33 -> 0.38).
The classifier head is thrown away; only the tower/projector weights stay in the model.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from services.common.models.vlm import VLM


@dataclass(frozen=True)
class WarmupExample:
    """An image tensor pair from the processor, the question and the short answer (the class)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor | None
    question_ids: list[int]
    answer: str


@dataclass
class WarmupResult:
    steps: int
    classes: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    train_accuracy: float = 0.0
    seconds: float = 0.0


def image_features(vlm: VLM, pixel_values: torch.Tensor, grid: torch.Tensor | None) -> list[torch.Tensor]:
    """Per image, the [tokens, hidden] features the LM would see (tower + projector/merger)."""
    inner = vlm.model.model
    cfg = vlm.model.config
    if grid is not None:
        out = inner.get_image_features(pixel_values=pixel_values, image_grid_thw=grid)
    else:
        out = inner.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
    feats = getattr(out, "pooler_output", out)
    return list(feats)


class _Head(nn.Module):
    """Pooled image tokens + bag of question tokens -> answer logits."""

    def __init__(self, hidden: int, vocab: int, classes: int, width: int = 256) -> None:
        super().__init__()
        self.question = nn.EmbeddingBag(vocab, width, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(hidden + width, width), nn.GELU(), nn.Linear(width, classes))

    def forward(self, pooled: torch.Tensor, q_ids: torch.Tensor, q_offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([pooled, self.question(q_ids, q_offsets)], dim=-1))


def encode(vlm: VLM, images: Sequence, questions: Sequence[str], answers: Sequence[str]) -> list[WarmupExample]:
    """Preprocess once: image tensors and question token ids."""
    proc = vlm.processor
    out = []
    for image, q, a in zip(images, questions, answers, strict=True):
        pv, grid, _ = proc.image_tensors(image)
        out.append(WarmupExample(pv, grid, vlm.tokenizer(q, add_special_tokens=False)["input_ids"], a))
    return out


def vision_warmup(
    vlm: VLM,
    examples: Sequence[WarmupExample],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> WarmupResult:
    """Train the vision tower (and projector) of ``vlm`` on answer classification; returns the curve."""
    if not examples or steps < 1:
        raise ValueError("vision_warmup needs examples and steps >= 1")
    start = time.perf_counter()
    classes = sorted({e.answer for e in examples})
    index = {a: i for i, a in enumerate(classes)}
    hidden = image_features(vlm, examples[0].pixel_values, examples[0].image_grid_thw)[0].shape[-1]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = _Head(hidden, vlm.vocab_size, len(classes))
    tower = [p for n, p in vlm.model.named_parameters() if _is_vision(n)]
    opt = torch.optim.AdamW([*tower, *head.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps) + 0.1 * s / steps)
    result = WarmupResult(steps=steps, classes=len(classes))
    was_training = vlm.model.training
    vlm.model.train()
    hits, seen, window = 0, 0, []
    columns = (TextColumn("[bold]vision warm-up"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("warmup", total=steps, loss=float("nan"))
        for step in range(steps):
            idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
            batch = [examples[i] for i in idx]
            logits = _forward(vlm, head, batch)
            target = torch.tensor([index[e.answer] for e in batch])
            loss = nn.functional.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*tower, *head.parameters()], 1.0)
            opt.step()
            sched.step()
            window.append(loss.item())
            if step >= steps - max(1, steps // 5):  # accuracy over the last fifth of training
                hits += int((logits.argmax(-1) == target).sum())
                seen += len(batch)
            if (step + 1) % 20 == 0 or step + 1 == steps:
                result.losses.append((step + 1, sum(window) / len(window)))
                window = []
            bar.update(task, advance=1, loss=loss.item())
    vlm.model.train(was_training)
    vlm.model.zero_grad(set_to_none=True)
    result.train_accuracy = hits / max(1, seen)
    result.seconds = time.perf_counter() - start
    return result


def _is_vision(name: str) -> bool:
    return any(k in name for k in ("visual", "vision_tower", "multi_modal_projector"))


def _forward(vlm: VLM, head: _Head, batch: Sequence[WarmupExample]) -> torch.Tensor:
    pv = torch.cat([e.pixel_values for e in batch])
    grids = [e.image_grid_thw for e in batch]
    grid = torch.cat(grids) if grids[0] is not None else None
    feats = image_features(vlm, pv.to(vlm.device, vlm.dtype), None if grid is None else grid.to(vlm.device))
    pooled = torch.stack([f.mean(0) for f in feats]).float()
    ids = [torch.tensor(e.question_ids or [0]) for e in batch]
    offsets = torch.tensor([0, *torch.tensor([len(i) for i in ids]).cumsum(0)[:-1].tolist()])
    return head(pooled, torch.cat(ids), offsets)
