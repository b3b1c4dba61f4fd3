"""Does the clients' reward carry the signal GRPO needs on the policy's own answers?

    make demo                                    # world, SFT policy and client RMs under runs/local
    python experiments/best_of_n.py --workdir runs/local --examples 200 --n 8 --temperature 0.3

GRPO can only raise accuracy where a group of sampled answers holds both right and wrong ones and
the reward ranks the right ones higher. This script samples ``--n`` answers per held-out question
from a policy (default the demo's SFT start), scores them with every client RM (loaded in process
from the workdir, as its node serves it) and reports per benchmark:

- greedy and sampled exact match, and pass@n (some answer right);
- ``mixed``: the share of groups with right and wrong answers (where the reward can teach anything);
- best-of-n exact match when the answer is picked by the home RM, by the mean of the RMs' scores
  (each standardised over the whole sample, as the orchestrator's calibration does), by the clients'
  true preference oracles, and at random (= sampled exact match);
- on the mixed groups, the within-group correlation of each pick rule's score with correctness;
- the share of sampled answers in each answer style (``answers.detect_styles``; an answer with no
  number in it, like "odd", reads as both terse styles).

A reward that picks the right answer in mixed groups well above the random pick is one GRPO can climb.
Writes ``--out`` (JSON) if given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from statistics import fmean

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from services.common.data.answers import detect_styles, exact_match  # noqa: E402
from services.common.data.world import load_world  # noqa: E402
from services.common.models.factory import load_vlm  # noqa: E402
from services.reward_node.checkpoint import load_checkpoint  # noqa: E402


def pick_accuracy(scores: torch.Tensor, right: torch.Tensor) -> float:
    """Exact match of the highest-scored answer of each group (scores, right: [Q, n]); ties go to the first."""
    return float(right.gather(1, scores.argmax(dim=1, keepdim=True)).float().mean())


def within_group_corr(scores: torch.Tensor, right: torch.Tensor) -> float:
    """Mean over mixed groups of the Pearson correlation between score and correctness inside the group."""
    r = right.float()
    mixed = (r.std(dim=1) > 0) & (scores.std(dim=1) > 0)
    if not mixed.any():
        return float("nan")
    s, r = scores[mixed], r[mixed]
    s = (s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True, unbiased=False)
    r = (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True, unbiased=False)
    return float((s * r).mean())


def style_shares(texts: list[str]) -> dict[str, float]:
    """Share of the answers in each style label: one style, "digits/word" (both terse), or "malformed"."""
    labels = ["/".join(sorted(detect_styles(t))) or "malformed" for t in texts]
    return {k: labels.count(k) / len(labels) for k in sorted(set(labels))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/local"))
    ap.add_argument("--policy", type=Path, default=None, help="policy folder (default <workdir>/policy-sft)")
    ap.add_argument("--examples", type=int, default=200, help="held-out examples per benchmark")
    ap.add_argument("--n", type=int, default=8, help="answers sampled per question (the GRPO group size)")
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    console = Console()
    torch.manual_seed(args.seed)
    world = load_world(args.workdir / "world")
    nodes = list(world.training_clients())
    missing = [n for n in nodes if not (args.workdir / "rm" / n / "metadata.json").is_file()]
    if missing:
        sys.exit(f"no trained RM for {', '.join(missing)} under {args.workdir / 'rm'}: run `make demo` first")
    vlm = load_vlm(args.policy or args.workdir / "policy-sft")
    rms = {n: load_checkpoint(args.workdir / "rm" / n).model for n in nodes}
    homes: dict[str, str] = {}
    for n in nodes:
        homes.setdefault(world.clients[n].home, n)
    oracles = [world.oracle(n) for n in nodes]

    results: dict[str, dict] = {}
    with Progress(console=console) as progress:
        for b in world.benchmarks:
            exs = world.examples(b, "test")[: args.examples]
            task = progress.add_task(b, total=len(exs))
            texts, greedy = [], []
            for start in range(0, len(exs), 16):
                chunk = exs[start : start + 16]
                images = [world.load_image(e.image) for e in chunk]
                qs = [e.question for e in chunk]
                groups = vlm.generate(qs, images, num_return_sequences=args.n, max_new_tokens=args.max_new_tokens,
                                      temperature=args.temperature, seed=args.seed + start)
                greedy += [g[0].text for g in vlm.generate(qs, images, max_new_tokens=args.max_new_tokens, do_sample=False)]
                texts += [[s.text for s in grp] for grp in groups]
                progress.advance(task, len(chunk))
            right = torch.tensor([[exact_match(t, e.answers) > 0 for t in grp] for e, grp in zip(exs, texts, strict=True)])
            flat_q = [e.question for e in exs for _ in range(args.n)]
            flat_im = [world.load_image(e.image) for e in exs for _ in range(args.n)]
            flat_t = [t for grp in texts for t in grp]
            per_rm = {}
            for n, rm in rms.items():
                s = torch.cat([rm.score_batch(flat_q[i : i + 64], flat_im[i : i + 64], flat_t[i : i + 64])
                               for i in range(0, len(flat_t), 64)])
                per_rm[n] = ((s - s.mean()) / s.std().clamp_min(1e-6)).view(len(exs), args.n)
            mean_z = torch.stack(list(per_rm.values())).mean(0)
            true_pref = torch.tensor([[fmean(o.score(e, t) for o in oracles) for t in grp]
                                      for e, grp in zip(exs, texts, strict=True)])
            home = per_rm[homes[b]] if b in homes else mean_z
            rules = {"home RM": home, "mean of RMs": mean_z, "true preference": true_pref,
                     **{f"rm:{n}": s for n, s in per_rm.items()}}
            rf = right.float()
            results[b] = {
                "n_questions": len(exs),
                "greedy": fmean(exact_match(t, e.answers) for e, t in zip(exs, greedy, strict=True)),
                "sampled": float(rf.mean()),
                "pass@n": float(rf.max(1).values.mean()),
                "mixed": float(((rf.std(1) > 0).float()).mean()),
                "best_of_n": {k: pick_accuracy(v, right) for k, v in rules.items()},
                "corr_in_mixed": {k: within_group_corr(v, right) for k, v in rules.items()},
                "distinct_answers": fmean(len(set(grp)) for grp in texts),
                "styles": style_shares(flat_t),
            }
    table = Table(title=f"{args.n} answers at T={args.temperature}, {args.examples} held-out questions per benchmark")
    cols = ["benchmark", "greedy", "sampled", f"pass@{args.n}", "mixed", "distinct",
            "bo-n home", "bo-n mean", "bo-n true", "corr home", "corr mean", "justified"]
    for c in cols:
        table.add_column(c, justify="right")
    for b, r in results.items():
        table.add_row(b, *(f"{x:.3f}" for x in (r["greedy"], r["sampled"], r["pass@n"], r["mixed"])),
                      f"{r['distinct_answers']:.1f}",
                      *(f"{r['best_of_n'][k]:.3f}" for k in ("home RM", "mean of RMs", "true preference")),
                      *(f"{r['corr_in_mixed'][k]:.3f}" for k in ("home RM", "mean of RMs")),
                      f"{r['styles'].get('justified', 0.0):.3f}")
    console.print(table)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "benchmarks": results},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
