"""Score a policy on a world's held-out split: answer accuracy, format compliance, client oracles;
or on an outside VQA dataset (``evaluate_examples``): answer accuracy and format only, since no
oracle knows its annotators' preferences.

Greedy decoding, so the numbers describe the policy, not a sampling seed. Shared by `mor sft`,
`mor demo` and `mor eval`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean, stdev

from rich.progress import Progress

from services.common.data.answers import exact_match, format_ok, vqa_accuracy
from services.common.data.chance import benchmark_chance, blind_baseline
from services.common.data.records import VQAExample
from services.common.data.sources import ImageSource
from services.common.data.world import World
from services.common.models.vlm import VLM


def answer(vlm: VLM, world: ImageSource, examples: Sequence[VQAExample], batch_size: int = 32,
           max_new_tokens: int = 24, progress: Progress | None = None) -> list[str]:
    """Greedy answers of ``vlm`` to ``examples``, in order."""
    task = progress.add_task("evaluate", total=len(examples)) if progress else None
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        gens = vlm.generate([e.question for e in chunk], [world.load_image(e.image) for e in chunk],
                            max_new_tokens=max_new_tokens, do_sample=False)
        out.extend(g[0].text for g in gens)
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    return out


def evaluate_policy(vlm: VLM, world: World, per_benchmark: int = 200, split: str = "test",
                    batch_size: int = 32, progress: Progress | None = None, per_example: bool = False) -> dict:
    """Per benchmark: exact match, VQA accuracy, format compliance, chance and blind baselines, and
    `preference`: the mean over the training clients of their true-preference (oracle) score of the
    answers; per client (training and held-out): mean true-preference score on its own domains.
    ``per_example`` adds, per benchmark, each example's id, exact match and preference (what
    ``paired_change`` compares between two policies)."""
    examples = [ex for b in world.benchmarks for ex in world.examples(b, split)[:per_benchmark]]
    responses = answer(vlm, world, examples, batch_size=batch_size, progress=progress)
    chance = benchmark_chance(examples)
    blind = blind_baseline(world.examples(None, "train"), examples)
    trainers = [world.oracle(name) for name in world.training_clients()]
    benchmarks, rows_by_benchmark = {}, {}
    for b in world.benchmarks:
        rows = [(ex, r) for ex, r in zip(examples, responses, strict=True) if ex.benchmark == b]
        em = [exact_match(r, ex.answers) for ex, r in rows]
        pref = [fmean(o.score(ex, r) for o in trainers) for ex, r in rows]
        benchmarks[b] = {
            "n": len(rows),
            "exact_match": fmean(em),
            "vqa_accuracy": fmean(vqa_accuracy(r, ex.answers) for ex, r in rows),
            "format_ok": fmean(float(format_ok(r)) for _, r in rows),
            "chance": chance.get(b, float("nan")),
            "blind": blind.get(b, float("nan")),
            "preference": fmean(pref),
        }
        rows_by_benchmark[b] = {"id": [ex.id for ex, _ in rows], "exact_match": em, "preference": pref}
    clients = {}
    for name, spec in world.clients.items():
        oracle = world.oracle(name)
        weights = spec.domain_mix
        per_b = {b: fmean(oracle.score(ex, r) for ex, r in zip(examples, responses, strict=True) if ex.benchmark == b)
                 for b in weights if b in benchmarks}
        total = sum(weights[b] for b in per_b)
        clients[name] = sum(weights[b] * s for b, s in per_b.items()) / total if total else float("nan")
    samples = [{"id": ex.id, "question": ex.question, "answers": ex.answers[:3], "response": r}
               for ex, r in list(zip(examples, responses, strict=True))[:: max(1, len(examples) // 12)]]
    report = {"split": split, "benchmarks": benchmarks, "client_preference": clients, "samples": samples}
    if per_example:
        report["per_example"] = rows_by_benchmark
    return report


def evaluate_examples(vlm: VLM, images: ImageSource, examples: Sequence[VQAExample], per_benchmark: int = 200,
                      split: str = "test", batch_size: int = 32, progress: Progress | None = None,
                      per_example: bool = False) -> dict:
    """``evaluate_policy`` for outside data: the first ``per_benchmark`` examples of each benchmark label
    (a dataset's ``benchmark`` column, else its name); exact match, VQA accuracy and format per label."""
    labels = list(dict.fromkeys(ex.benchmark for ex in examples))
    chosen = [ex for b in labels for ex in [e for e in examples if e.benchmark == b][:per_benchmark]]
    responses = answer(vlm, images, chosen, batch_size=batch_size, progress=progress)
    benchmarks, rows_by_benchmark = {}, {}
    for b in labels:
        rows = [(ex, r) for ex, r in zip(chosen, responses, strict=True) if ex.benchmark == b]
        em = [exact_match(r, ex.answers) for ex, r in rows]
        benchmarks[b] = {
            "n": len(rows),
            "exact_match": fmean(em),
            "vqa_accuracy": fmean(vqa_accuracy(r, ex.answers) for ex, r in rows),
            "format_ok": fmean(float(format_ok(r)) for _, r in rows),
        }
        rows_by_benchmark[b] = {"id": [ex.id for ex, _ in rows], "exact_match": em}
    samples = [{"id": ex.id, "question": ex.question, "answers": ex.answers[:3], "response": r}
               for ex, r in list(zip(chosen, responses, strict=True))[:: max(1, len(chosen) // 12)]]
    report = {"split": split, "benchmarks": benchmarks, "samples": samples}
    if per_example:
        report["per_example"] = rows_by_benchmark
    return report


def paired_change(before: dict, after: dict, benchmark: str) -> dict:
    """Two ``per_example`` evaluations of the same examples, compared pair by pair: answers that
    turned right / wrong, the exact-match change and the mean preference change, each with its paired
    standard error (preference NaN for outside data, which has no preference oracle)."""
    a, b = before["per_example"][benchmark], after["per_example"][benchmark]
    if a["id"] != b["id"]:
        raise ValueError(f"{benchmark}: the two evaluations are not of the same examples")
    diff = [y - x for x, y in zip(a.get("preference", []), b.get("preference", []), strict=True)]
    em = [y - x for x, y in zip(a["exact_match"], b["exact_match"], strict=True)]
    return {
        "turned_right": sum(d > 0 for d in em),
        "turned_wrong": sum(d < 0 for d in em),
        "exact_match_change": fmean(em) if em else math.nan,
        "exact_match_se": stdev(em) / math.sqrt(len(em)) if len(em) > 1 else math.nan,
        "preference_change": fmean(diff) if diff else math.nan,
        "preference_se": stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan,
    }
