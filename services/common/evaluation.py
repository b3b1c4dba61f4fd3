"""Score a policy on a world's held-out split: answer accuracy, format compliance, client oracles.

Greedy decoding, so the numbers describe the policy, not a sampling seed. Shared by `mor sft`,
`mor demo` and (later) `mor eval`.
"""
from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from rich.progress import Progress

from services.common.data.answers import exact_match, format_ok, vqa_accuracy
from services.common.data.chance import benchmark_chance, blind_baseline
from services.common.data.records import VQAExample
from services.common.data.world import World
from services.common.models.vlm import VLM


def answer(vlm: VLM, world: World, examples: Sequence[VQAExample], batch_size: int = 32,
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
                    batch_size: int = 32, progress: Progress | None = None) -> dict:
    """Per benchmark: exact match, VQA accuracy, format compliance, chance and blind baselines, and
    `preference`: the mean over the training clients of their true-preference (oracle) score of the
    answers; per client (training and held-out): mean true-preference score on its own domains."""
    examples = [ex for b in world.benchmarks for ex in world.examples(b, split)[:per_benchmark]]
    responses = answer(vlm, world, examples, batch_size=batch_size, progress=progress)
    chance = benchmark_chance(examples)
    blind = blind_baseline(world.examples(None, "train"), examples)
    trainers = [world.oracle(name) for name in world.training_clients()]
    benchmarks = {}
    for b in world.benchmarks:
        rows = [(ex, r) for ex, r in zip(examples, responses, strict=True) if ex.benchmark == b]
        benchmarks[b] = {
            "n": len(rows),
            "exact_match": fmean(exact_match(r, ex.answers) for ex, r in rows),
            "vqa_accuracy": fmean(vqa_accuracy(r, ex.answers) for ex, r in rows),
            "format_ok": fmean(float(format_ok(r)) for _, r in rows),
            "chance": chance.get(b, float("nan")),
            "blind": blind.get(b, float("nan")),
            "preference": fmean(o.score(ex, r) for o in trainers for ex, r in rows),
        }
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
    return {"split": split, "benchmarks": benchmarks, "client_preference": clients, "samples": samples}
