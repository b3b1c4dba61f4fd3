"""Preference pairs: candidate answers for an example, labelled by an oracle with a margin.

Candidates are the correct answer and up to two wrong answers (from the question type's answer space,
never one any annotator gave) rendered in every style. Each pair is one of three kinds, drawn with
fixed probabilities, so a reward model has to learn both correctness and the client's taste:
  correctness (0.50)  correct answer in a random style vs a wrong answer in a random style
  style       (0.35)  correct in the oracle's own style vs correct in a style it does not match
  format      (0.15)  correct in a random style vs the same answer rambling (fails format_ok)
(a client's `kind_mix` replaces these probabilities: expert annotators mostly judge correctness).
A kind that cannot apply (no style term for a neutral server oracle or benchmark, no wrong answer left) is dropped
and the rest renormalised. The oracle orders the two; a pair whose score gap is <= margin is redrawn, so every
stored pair agrees with its oracle by more than the margin before any label flip.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .answers import STYLES, detect_styles, majority_answer, normalize_answer, render_answer
from .benchmarks.registry import BENCHMARKS, get_benchmark
from .oracle import PreferenceOracle
from .records import PAIR_KINDS, PreferencePair, VQAExample

KIND_P: tuple[float, ...] = (0.50, 0.35, 0.15)
MAX_TRIES = 8


def wrong_answers(example: VQAExample, rng: np.random.Generator, k: int = 2) -> list[str]:
    """Up to k canonical answers from the example's answer space that no annotator gave
    (failing that, ones only a minority gave)."""
    qtype = example.qtype
    if example.benchmark not in BENCHMARKS or qtype is None:
        return []
    space = get_benchmark(example.benchmark).qtypes[qtype].answer_space
    given = {normalize_answer(a) for a in example.answers}
    options = [a for a in space if normalize_answer(a) not in given]
    if not options:  # e.g. yes/no where one annotator dissented: use the minority answer
        majority = majority_answer(example.answers)
        options = [a for a in space if normalize_answer(a) != majority]
    if not options:
        return []
    idx = rng.choice(len(options), size=min(k, len(options)), replace=False)
    return [options[int(i)] for i in idx]


def _style(rng: np.random.Generator) -> str:
    return STYLES[int(rng.integers(len(STYLES)))]


def _candidates(
    kind: str, example: VQAExample, oracle: PreferenceOracle, rng: np.random.Generator
) -> tuple[str, str] | None:
    if kind == "correctness":
        wrong = wrong_answers(example, rng, k=1)
        if not wrong:
            return None
        good = render_answer(example, _style(rng), rng)
        bad = render_answer(example, _style(rng), rng, answer=wrong[0])
        return good, bad
    if kind == "style":
        wanted = oracle.style_for(example)
        if wanted is None:
            return None
        own = render_answer(example, wanted, rng)
        others = [s for s in STYLES if s != wanted]
        rng.shuffle(others)
        for s in others:
            other = render_answer(example, s, rng)
            if wanted not in detect_styles(other):
                return own, other
        return None
    good = render_answer(example, _style(rng), rng)
    return good, render_answer(example, "verbose", rng)


def make_pair(
    pair_id: str,
    client: str,
    example: VQAExample,
    oracle: PreferenceOracle,
    rng: np.random.Generator,
    margin: float,
    kind_mix: dict[str, float] | None = None,
) -> PreferencePair:
    """One labelled pair for an example; raises ValueError if no candidate pair clears the margin.

    kind_mix: kind -> weight (default PAIR_KINDS with KIND_P); kinds left out are never drawn."""
    # In PAIR_KINDS order whatever the dict's order: a config read back from a manifest has sorted keys.
    weights = {k: kind_mix[k] for k in PAIR_KINDS if k in kind_mix} if kind_mix else dict(zip(PAIR_KINDS, KIND_P, strict=True))
    for _ in range(MAX_TRIES):
        if not weights:
            break
        kinds = list(weights)
        p = np.array([weights[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        cands = _candidates(kind, example, oracle, rng)
        if cands is None:  # this kind cannot apply to this example / oracle: drop it
            del weights[kind]
            continue
        a, b = cands
        sa, sb = oracle.score(example, a), oracle.score(example, b)
        if abs(sa - sb) <= margin:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        return PreferencePair(
            id=pair_id,
            client=client,
            benchmark=example.benchmark,
            image=example.image,
            question=example.question,
            chosen=chosen,
            rejected=rejected,
            example_id=example.id,
            kind=kind,
        )
    raise ValueError(f"no candidate pair for example {example.id} clears margin {margin}")


def flip(pair: PreferencePair) -> PreferencePair:
    """The same pair with chosen and rejected swapped (a label-noise flip)."""
    return replace(pair, chosen=pair.rejected, rejected=pair.chosen)


def flip_ids(ids: list[str], share: float, rng: np.random.Generator) -> list[str]:
    """Exactly round(share * len(ids)) ids, drawn without replacement, in input order."""
    n = int(round(share * len(ids)))
    if n == 0:
        return []
    pick = set(int(i) for i in rng.choice(len(ids), size=n, replace=False))
    return [x for i, x in enumerate(ids) if i in pick]
