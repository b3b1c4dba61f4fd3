"""How well does a client's light RM learn its home domain from grounding? Per question type.

Grounds a fresh light RM (architecture options as JSON) on one client's labelled examples of a
world, as its node does before Bradley-Terry (its classifier stage first, then ranking candidates), then measures on the world's held-out examples of
the client's home benchmark: top-1 accuracy of the correct answer among its candidates (the
grounding task itself, per question type) and pair accuracy on the client's held-out correctness
pairs at home (what `mor reward-node train` reports, before the Bradley-Terry stage).

    python experiments/rm_grounding.py --world runs/local/world --client clinic \
        --arch '{"hidden": 128}' --classify-epochs 30 --epochs 24 --out experiments/results/rm_grounding/clinic_default.json
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from services.common.data.world import load_world
from services.reward_node.grounding import candidate_set, classify, ground
from services.reward_node.rm.light import LightRM
from services.reward_node.train import pair_accuracy, raw_scores


def candidate_accuracy(model: LightRM, examples, load_image, seed: int) -> dict[str, dict[str, float]]:
    """Share of examples whose correct answer scores above all its candidates, per question type."""
    gset = candidate_set(examples, seed)
    if gset.n_examples != len(examples):
        raise SystemExit("some held-out question type has a single answer: no candidates to rank it against")
    scores = raw_scores(model, model.prepare(gset.prompts, [load_image(k) for k in gset.image_keys], gset.responses))
    right: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        ok = int(int(scores[gset.starts[i]:gset.starts[i + 1]].argmax()) == 0)
        right[ex.qtype or "?"].append(ok)
        right["all"].append(ok)
    return {q: {"accuracy": sum(v) / len(v), "n": len(v)} for q, v in sorted(right.items())}


def correctness_pairs(model: LightRM, pairs, load_image) -> dict[str, float]:
    """Pair accuracy (chosen above rejected) on ``pairs``: one pass over chosen, then rejected answers."""
    if not pairs:
        return {"accuracy": float("nan"), "n": 0}
    images = [load_image(p.image) for p in pairs]
    scores = raw_scores(model, model.prepare([p.question for p in pairs] * 2, images * 2,
                                             [p.chosen for p in pairs] + [p.rejected for p in pairs]))
    return {"accuracy": pair_accuracy(scores[: len(pairs)], scores[len(pairs):]), "n": len(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=Path, default=Path("runs/local/world"))
    ap.add_argument("--client", default="clinic")
    ap.add_argument("--arch", default="{}", help="LightRM keyword arguments as JSON")
    ap.add_argument("--epochs", type=int, default=24, help="grounding epochs (ranking candidates)")
    ap.add_argument("--classify-epochs", type=int, default=30, help="epochs of the classifier stage before it")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-examples", type=int, default=1000)
    ap.add_argument("--extra-labelled", type=int, default=0,
                    help="add this many of the world's home-benchmark train examples to the client's labelled set "
                         "(what would more private labelled data give? an experiment, not what a node does)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        arch = json.loads(args.arch)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--arch: not JSON ({exc})") from None
    torch.set_num_threads(args.threads)
    world = load_world(args.world)
    load_image = functools.lru_cache(maxsize=None)(world.load_image)  # one image object per file, as a node keeps
    home = world.clients[args.client].home
    labelled = world.labelled(args.client)
    if args.extra_labelled:
        own = {ex.id for ex in labelled}
        labelled += [ex for ex in world.examples(home, "train") if ex.id not in own][: args.extra_labelled]
    torch.manual_seed(args.seed)
    model = LightRM(**arch)
    t0 = time.perf_counter()
    opts = {"batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": args.seed}
    classified = classify(model, labelled, load_image, epochs=args.classify_epochs, **opts)
    losses = ground(model, candidate_set(labelled, args.seed), load_image, epochs=args.epochs, **opts)
    seconds = time.perf_counter() - t0
    test = world.examples(home, "test")[: args.eval_examples]
    pairs = [p for p in world.pairs(args.client, "test") if p.kind == "correctness" and p.benchmark == home]
    result = {
        "client": args.client, "home": home, "arch": arch, "classify_epochs": args.classify_epochs,
        "classify_loss_per_epoch": [round(x, 4) for x in classified], "epochs": args.epochs, "lr": args.lr,
        "seed": args.seed, "labelled": len(labelled), "extra_labelled": args.extra_labelled, "seconds": round(seconds, 1),
        "loss_per_epoch": [round(x, 4) for x in losses],
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "candidate_accuracy": candidate_accuracy(model, test, load_image, args.seed + 1),
        "home_correctness_pairs": correctness_pairs(model, pairs, load_image),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
