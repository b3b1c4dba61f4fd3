"""Grounding: the node teaches its RM what is right on its own labelled examples, before Bradley-Terry.

Pairwise preferences alone never taught an RM's image pathway the domain: a light RM trained on
4,000 pairs, 90 % at home, stayed at chance on correctness pairs while it learned style and format.
An organisation that owns labelled examples (image, question, reference answers) can do better,
privately: for each example the RM scores the correct answer against every other answer its
labelled data knows for that kind of question, each written in a random answer style, and learns
to put the correct one first (softmax cross-entropy over the candidates, the RM's own score as the
logit). This is a VQA classifier trained through the RM's scoring function, so the RM learns to
read answers of any style against the image; the Bradley-Terry stage that follows then adds the
organisation's taste. Nothing of it leaves the node: the examples are read from its data folder
and only the trained weights are kept.

Candidate answers of an example: its majority reference answer (correct), the distinct majority
answers of the node's other labelled examples of the same question type (the generator's `qtype`
in `meta` where present, else the question text), at most ``max_negatives`` of them, and up to
``max_foreign`` answers of *other* question types ("odd" to "what digit is shown?"). Without the
foreign ones an RM never saw an answer that does not fit its question, scored it as it liked, and
a policy trained on it learned to answer every digits question with "odd" (full table, seed 2).

Before it, an RM whose image pathway reads the image with the question (a light RM's cells) first
learns to answer the labelled questions itself (``classify``): a classifier over the answers the
examples know, through a head that is thrown away after it. Through the RM's own score alone the
cells pathway sat on a plateau (clinic's shapes RM at chance after 24 epochs); after 30 epochs as a
classifier, grounding converged in a few epochs (experiments/results/rm_grounding/).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.common.data.answers import STYLES, majority_answer, normalize_answer, render_answer
from services.common.data.records import VQAExample
from services.common.text_encoder import EMBED_DIM
from services.reward_node.optim import train_loop
from services.reward_node.rm import LightRM, RewardModel


@dataclass(frozen=True)
class GroundingSet:
    """Candidate rows of every labelled example: rows[starts[i]:starts[i+1]] belong to example i,
    the first of them its correct answer."""

    prompts: list[str]
    image_keys: list[str]
    responses: list[str]
    starts: list[int]

    @property
    def n_examples(self) -> int:
        return len(self.starts) - 1


def _qtype_key(ex: VQAExample) -> str:
    return ex.qtype if ex.qtype is not None else ex.question


def candidate_set(
    examples: Sequence[VQAExample], seed: int, max_negatives: int = 9, max_foreign: int = 3
) -> GroundingSet:
    """Every example's correct answer and its negatives, each rendered in a random style (seeded)."""
    rng = np.random.default_rng(seed)
    answers: dict[str, dict[str, str]] = defaultdict(dict)  # qtype key -> normalised -> surface form
    for ex in examples:
        a = majority_answer(ex.answers)
        answers[_qtype_key(ex)].setdefault(normalize_answer(a), a)
    every = sorted({n: a for known in answers.values() for n, a in known.items()}.items())
    prompts: list[str] = []
    keys: list[str] = []
    responses: list[str] = []
    starts = [0]
    for ex in examples:
        correct = majority_answer(ex.answers)
        wrong = [a for n, a in sorted(answers[_qtype_key(ex)].items()) if n != normalize_answer(correct)]
        if len(wrong) > max_negatives:
            wrong = [wrong[int(i)] for i in sorted(rng.choice(len(wrong), size=max_negatives, replace=False))]
        if not wrong:
            continue  # nothing of its kind to tell the correct answer from
        own = answers[_qtype_key(ex)]
        foreign = [(n, a) for n, a in every if n not in own]  # answers of other question types only
        if foreign and max_foreign > 0:
            picks = rng.choice(len(foreign), size=min(max_foreign, len(foreign)), replace=False)
            wrong += [foreign[int(i)][1] for i in sorted(picks)]
        for ans in [correct, *wrong]:
            prompts.append(ex.question)
            keys.append(ex.image)
            responses.append(render_answer(ex, STYLES[int(rng.integers(len(STYLES)))], rng, answer=ans))
        starts.append(len(responses))
    return GroundingSet(prompts, keys, responses, starts)


def ground(
    model: RewardModel,
    gset: GroundingSet,
    load_image: Callable[[str], object],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Softmax cross-entropy of the correct candidate over each example's candidates; mean loss per epoch."""
    n = gset.n_examples
    if n == 0 or epochs == 0:
        return []
    prepared = model.prepare(gset.prompts, [load_image(k) for k in gset.image_keys], gset.responses)

    def batch_loss(ex: list[int]) -> torch.Tensor:
        rows = [r for i in ex for r in range(gset.starts[i], gset.starts[i + 1])]
        sizes = torch.tensor([gset.starts[i + 1] - gset.starts[i] for i in ex])
        scores = model(prepared.select(rows))
        mask = torch.arange(int(sizes.max()))[None, :] < sizes[:, None]
        logits = torch.full(mask.shape, float("-inf")).masked_scatter(mask, scores)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(ex), dtype=torch.long))

    return train_loop(model, batch_loss, n, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      max_grad_norm=max_grad_norm, seed=seed, schedule=_constant_after_warmup, on_step=on_step)


def _constant_after_warmup(step: int, total: int) -> float:
    """Constant rate after a 5 % warm-up: the loss sits on a plateau for the first epochs, and a
    decaying schedule ended training just as it left it."""
    return min(1.0, (step + 1) / max(1, total // 20))


class _Classifier(nn.Module):
    """The RM's question-conditioned image pathway with a throw-away answer head on top."""

    def __init__(self, model: LightRM, n_answers: int, hidden: int = 256) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Sequential(nn.Linear(model.image_dim + EMBED_DIM, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.model.cnn.parameters(), *self.head.parameters()]


def reads_with_question(model: RewardModel) -> bool:
    """Whether ``model`` has an image pathway that ``classify`` can train (a light RM's cells)."""
    return isinstance(model, LightRM) and model.pathway == "cells"


def classify(
    model: RewardModel,
    examples: Sequence[VQAExample],
    load_image: Callable[[str], object],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train the image pathway as a classifier of each example's majority answer (normalised) among
    every answer of ``examples``; mean loss per epoch ([] when the model has no such pathway)."""
    if not reads_with_question(model) or epochs == 0 or not examples:
        return []
    assert isinstance(model, LightRM)
    answers = sorted({normalize_answer(majority_answer(ex.answers)) for ex in examples})
    index = {a: i for i, a in enumerate(answers)}
    target = torch.tensor([index[normalize_answer(majority_answer(ex.answers))] for ex in examples])
    prepared = model.prepare([ex.question for ex in examples], [load_image(ex.image) for ex in examples],
                             [""] * len(examples))
    clf = _Classifier(model, len(answers))

    def batch_loss(ex: list[int]) -> torch.Tensor:
        part = prepared.select(ex)
        v = model.image_features(part)
        logits = clf.head(torch.cat([nn.functional.gelu(v), part.prompt_emb], dim=-1))
        return nn.functional.cross_entropy(logits, target[ex])

    return train_loop(clf, batch_loss, len(examples), epochs=epochs, batch_size=batch_size, lr=lr,  # type: ignore[arg-type]
                      weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                      schedule=_constant_after_warmup, on_step=on_step)


__all__ = ["GroundingSet", "candidate_set", "classify", "ground", "reads_with_question"]
