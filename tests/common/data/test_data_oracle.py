"""Oracles prefer correct answers and their own style; stored pairs agree with their oracle."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from services.common.data.answers import STYLES, detect_styles, render_answer
from services.common.data.config import WorldConfig
from services.common.data.oracle import ClientOracle, ServerOracle
from services.common.data.prefs import wrong_answers
from services.common.data.world import World, load_world
from services.common.data.world_writer import make_world


def test_every_client_prefers_any_correct_over_any_wrong(world: World) -> None:
    rng = np.random.default_rng(0)
    for name, spec in world.clients.items():
        oracle = ClientOracle(spec)
        for ex in world.examples(None, "test")[::7]:
            wrong = wrong_answers(ex, rng, k=2)
            correct_scores = [oracle.score(ex, render_answer(ex, s, random.Random(0))) for s in STYLES]
            wrong_scores = [
                oracle.score(ex, render_answer(ex, s, random.Random(0), answer=w))
                for s in STYLES
                for w in wrong
            ]
            assert min(correct_scores) > max(wrong_scores, default=-1.0), (name, ex.id)


@pytest.mark.parametrize("style", STYLES)
def test_oracle_prefers_its_own_style_among_correct_answers(world: World, style: str) -> None:
    oracle = ClientOracle(world.clients["clinic"].model_copy(update={"style": style}))
    number_examples = [ex for ex in world.examples(None, "test") if ex.answer_type == "number"]
    assert number_examples
    for ex in number_examples:
        own = oracle.score(ex, render_answer(ex, style))
        for other in STYLES:
            if other != style:
                assert own > oracle.score(ex, render_answer(ex, other)) + 0.1, (ex.id, style, other)


def test_oracle_formula_closed_form(world: World) -> None:
    ex = next(e for e in world.examples("charts", "test") if e.meta["qtype"] == "value")
    oracle = ClientOracle(world.clients["bank"])  # digits style, 3-word budget
    right = render_answer(ex, "digits")
    parts = oracle.components(ex, right)
    expected_acc = parts["correctness"]
    assert parts["style"] == 1.0 and parts["format"] == 1.0 and parts["excess_words"] == 0.0
    assert oracle.score(ex, right) == pytest.approx(expected_acc + 0.25 + 0.15)
    assert oracle.score(ex, "") == pytest.approx(0.0)


def test_server_oracle_is_style_neutral(world: World) -> None:
    oracle = ServerOracle()
    ex = next(e for e in world.examples("shapes", "test") if e.answer_type == "number")
    scores = {s: oracle.score(ex, render_answer(ex, s)) for s in STYLES}
    assert scores["word"] == pytest.approx(scores["digits"]) == pytest.approx(scores["justified"])
    assert oracle.score(ex, render_answer(ex, "verbose")) < scores["word"]


def test_stored_pairs_agree_with_oracle_except_flips(world: World) -> None:
    margin = world.config.pair_margin
    for name in world.clients:
        oracle = world.oracle(name)
        for split in ("train", "test"):
            flipped = set(world.flips(name)[split])
            for p in world.pairs(name, split):
                ex = world.example(p.example_id)
                gap = oracle.score(ex, p.chosen) - oracle.score(ex, p.rejected)
                if p.id in flipped:
                    assert gap < -margin, (name, p.id)
                else:
                    assert gap > margin, (name, p.id)


def test_clean_pairs_all_agree(world: World) -> None:
    oracle = world.oracle("market")
    for p in world.pairs("market", "train", clean=True):
        ex = world.example(p.example_id)
        assert oracle.score(ex, p.chosen) > oracle.score(ex, p.rejected)


def test_flip_share_matches_config(world: World) -> None:
    share = world.config.noisy_flip_share
    assert share > 0
    for split in ("train", "test"):
        pairs = world.pairs("market", split)
        flipped = world.flips("market")[split]
        assert len(flipped) == round(share * len(pairs))
        oracle = world.oracle("market")
        disagree = sum(
            oracle.score(world.example(p.example_id), p.chosen)
            < oracle.score(world.example(p.example_id), p.rejected)
            for p in pairs
        )
        assert abs(disagree / len(pairs) - share) <= 0.02
    for name in ("clinic", "bank", "school", "lab"):
        assert world.flips(name) == {"train": [], "test": []}


def test_router_pairs_agree_with_server_oracle(world: World) -> None:
    oracle = world.server_oracle()
    for p in world.router_pairs():
        assert p.client == "server"
        ex = world.example(p.example_id)
        assert oracle.score(ex, p.chosen) - oracle.score(ex, p.rejected) > world.config.pair_margin


def test_pairs_mix_correctness_and_style_contrasts(world: World) -> None:
    oracle = world.oracle("school")
    pairs = world.pairs("school", "train")
    kinds = {"correctness": 0, "same_answer": 0}
    for p in pairs:
        ex = world.example(p.example_id)
        same = (
            oracle.components(ex, p.chosen)["correctness"] == oracle.components(ex, p.rejected)["correctness"]
        )
        kinds["same_answer" if same else "correctness"] += 1
    assert kinds["correctness"] > 0.25 * len(pairs) and kinds["same_answer"] > 0.25 * len(pairs)


def test_domain_server_oracle_rewards_each_benchmarks_home_style(world: World) -> None:
    styles = world.config.domain_styles()
    assert styles == {"shapes": "word", "charts": "digits", "digits": "justified"}
    oracle = ServerOracle(styles)
    for bench, wanted in styles.items():
        ex = next(e for e in world.examples(bench, "test") if e.answer_type == "number")
        scores = {s: oracle.score(ex, render_answer(ex, s)) for s in STYLES if s != "verbose"}
        assert max(scores, key=scores.get) == wanted, (bench, scores)
        # correctness still dominates: the right answer in a foreign style beats a wrong one in the wanted style
        wrong = wrong_answers(ex, np.random.default_rng(0), k=1)[0]
        foreign = next(s for s in scores if s != wanted)
        assert oracle.score(ex, render_answer(ex, foreign)) > oracle.score(ex, render_answer(ex, wanted, answer=wrong))
    assert ServerOracle(styles).style_for(world.examples("shapes", "test")[0]) == "word"
    assert ServerOracle({"charts": "digits"}).style_for(world.examples("shapes", "test")[0]) is None


def test_a_domain_world_labels_style_router_pairs_by_each_domains_convention(tmp_path: Path) -> None:
    cfg = WorldConfig.small(seed=3, router_pair_styles="domain", router_pairs_size=60, prompt_pool_size=12)
    make_world(cfg, tmp_path / "w", progress=False)
    world = load_world(tmp_path / "w")
    assert world.server_oracle().styles == cfg.domain_styles()
    pairs = world.router_pairs()
    style_pairs = [p for p in pairs if p.kind == "style"]
    assert len(style_pairs) >= 10, len(pairs)
    for p in style_pairs:
        wanted = cfg.domain_styles()[p.benchmark]
        assert wanted in detect_styles(p.chosen) and wanted not in detect_styles(p.rejected), p
    neutral = WorldConfig.small(seed=3)
    assert neutral.server_oracle_styles() == {}
