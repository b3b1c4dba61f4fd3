"""Is a client RM fooled by an answer that does not fit the question? (the reward hack GRPO found)

    make demo
    python experiments/foreign_answers.py --workdir runs/local --examples 200
    python experiments/foreign_answers.py --world runs/experiments/full/worlds/main \
        --rm school=runs/experiments/full/rm/school-light-s0-<digest> ...     # the table's RMs

A policy trained on an RM's reward once learned to answer every digits question with "odd": an
answer from another question type's space, which the RM had never been shown as wrong. For each
training client's RM (loaded from the workdir as its node serves it) and ``--examples`` held-out
questions of its home benchmark, this script scores the right answer, one wrong answer of the same
question type and a few foreign answers (another question type's: "odd", "red", "B", ...), all in the
client's own style, and reports how often the best foreign answer scores above the right one and above
the wrong one. An RM grounded with foreign negatives (services/reward_node/grounding.py) should put
both near zero. Writes ``--out`` (JSON) if given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.common.data.answers import normalize_answer, render_answer  # noqa: E402
from services.common.data.benchmarks.registry import BENCHMARK_NAMES, get_benchmark  # noqa: E402
from services.common.data.prefs import wrong_answers  # noqa: E402
from services.common.data.world import load_world  # noqa: E402
from services.reward_node.checkpoint import load_checkpoint  # noqa: E402


def foreign_answers(benchmark: str, qtype: str, k: int, rng: np.random.Generator) -> list[str]:
    """Up to k answers from the answer spaces of every other question type of every benchmark."""
    own = {normalize_answer(a) for a in get_benchmark(benchmark).qtypes[qtype].answer_space}
    pool = sorted({a for b in BENCHMARK_NAMES for t in get_benchmark(b).qtypes.values()
                   for a in t.answer_space if normalize_answer(a) not in own})
    return [pool[int(i)] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]


def probe(world, node: str, rm_dir: Path, n_examples: int, n_foreign: int) -> dict[str, float]:
    model = load_checkpoint(rm_dir).model
    spec = world.clients[node]
    rng = np.random.default_rng(0)
    above_right = above_wrong = n = 0
    for ex in world.examples(spec.home, "test")[:n_examples]:
        wrong = wrong_answers(ex, rng, k=1)
        if not wrong or ex.qtype is None:
            continue
        foreign = foreign_answers(ex.benchmark, ex.qtype, n_foreign, rng)
        answers = [None, wrong[0], *foreign]
        responses = [render_answer(ex, spec.style, answer=a) for a in answers]
        image = world.load_image(ex.image)
        s = model.score_batch([ex.question] * len(responses), [image] * len(responses), responses)
        best_foreign = s[2:].max()
        above_right += int(best_foreign > s[0])
        above_wrong += int(best_foreign > s[1])
        n += 1
    return {"home": spec.home, "examples": n, "foreign_above_right": above_right / max(n, 1),
            "foreign_above_wrong": above_wrong / max(n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/local"), help="a `make demo` workdir (world/, rm/<node>/)")
    ap.add_argument("--world", type=Path, default=None, help="the world (default <workdir>/world)")
    ap.add_argument("--rm", action="append", default=[], metavar="NODE=DIR",
                    help="a client's RM checkpoint (default <workdir>/rm/<node> for every training client)")
    ap.add_argument("--examples", type=int, default=200, help="held-out questions per client (its home benchmark)")
    ap.add_argument("--foreign", type=int, default=4, help="foreign answers per question")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    world = load_world(args.world or args.workdir / "world")
    if args.rm:
        pairs = [item.partition("=") for item in args.rm]
        bad = [item for item, (node, eq, _) in zip(args.rm, pairs, strict=True) if not eq or node not in world.clients]
        if bad:
            sys.exit(f"--rm {bad[0]!r}: expected NODE=DIR with NODE one of {sorted(world.clients)}")
        rms = {node: Path(path) for node, _, path in pairs}
    else:
        rms = {n: args.workdir / "rm" / n for n in world.training_clients()}
    missing = [str(d) for d in rms.values() if not (d / "metadata.json").is_file()]
    if missing:
        sys.exit(f"no trained RM at {', '.join(missing)}: run `make demo` first")
    torch.set_num_threads(1)
    report = {n: probe(world, n, d, args.examples, args.foreign) for n, d in rms.items()}
    for n, r in report.items():
        print(f"{n} ({r['home']}, {r['examples']} questions): best foreign answer above the right one "
              f"{r['foreign_above_right']:.3f}, above a wrong one of the question's type {r['foreign_above_wrong']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
