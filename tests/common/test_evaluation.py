"""evaluate_policy on a real (small) world with policies whose answers we control."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.common.data import WorldConfig, load_world, make_world
from services.common.data.answers import render_answer
from services.common.evaluation import evaluate_policy, paired_change


class ScriptedPolicy:
    """Replays prepared answers in order (the policy is the input under test's control)."""

    def __init__(self, answers: list[str]):
        self.answers = list(answers)

    def generate(self, questions, images, max_new_tokens, do_sample):
        assert do_sample is False and len(questions) == len(images)
        return [[SimpleNamespace(text=self.answers.pop(0))] for _ in questions]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "world"
    make_world(WorldConfig.small(seed=3), root, progress=False)
    return load_world(root)


def run(world, style, per_example=False):
    examples = [ex for b in world.benchmarks for ex in world.examples(b, "test")[:10]]
    policy = ScriptedPolicy([render_answer(ex, style) if style else "purple elephant" for ex in examples])
    return evaluate_policy(policy, world, per_benchmark=10, batch_size=7, per_example=per_example)


def test_truthful_policy_scores_one_and_pleases_matching_client(world):
    report = run(world, "word")

    for row in report["benchmarks"].values():
        assert row["n"] == 10
        assert row["exact_match"] == pytest.approx(1.0)
        assert row["format_ok"] == pytest.approx(1.0)
        assert 0 < row["chance"] < 0.6
    prefs = report["client_preference"]
    assert prefs["clinic"] > prefs["bank"]  # clinic wants single words, bank wants digits


def test_wrong_policy_scores_zero_and_below_truthful(world):
    wrong, right = run(world, None), run(world, "digits")

    assert all(r["exact_match"] == 0 for r in wrong["benchmarks"].values())
    assert all(wrong["client_preference"][c] < right["client_preference"][c] for c in right["client_preference"])
    assert all(wrong["benchmarks"][b]["preference"] < right["benchmarks"][b]["preference"] for b in right["benchmarks"])


def test_benchmark_preference_is_the_mean_of_the_training_clients_oracles(world):
    report = run(world, "justified")
    examples = [ex for ex in world.examples("digits", "test")[:10]]
    oracles = [world.oracle(c) for c in world.training_clients()]
    expected = sum(o.score(ex, render_answer(ex, "justified")) for o in oracles for ex in examples) / (10 * len(oracles))

    assert report["benchmarks"]["digits"]["preference"] == pytest.approx(expected)
    assert world.config.held_out_client.name not in world.training_clients()


def test_per_example_rows_add_up_to_the_benchmark_figures(world):
    report = run(world, "justified", per_example=True)

    assert "per_example" not in run(world, "justified")
    for b, row in report["benchmarks"].items():
        rows = report["per_example"][b]
        assert rows["id"] == [ex.id for ex in world.examples(b, "test")[:10]]
        assert sum(rows["exact_match"]) / 10 == pytest.approx(row["exact_match"])
        assert sum(rows["preference"]) / 10 == pytest.approx(row["preference"])


def test_paired_change_counts_flips_and_the_paired_preference_change(world):
    wrong, right = run(world, None, per_example=True), run(world, "digits", per_example=True)

    for b in world.benchmarks:
        up, down = paired_change(wrong, right, b), paired_change(right, wrong, b)
        assert (up["turned_right"], up["turned_wrong"]) == (10, 0)
        assert (down["turned_right"], down["turned_wrong"]) == (0, 10)
        change = right["benchmarks"][b]["preference"] - wrong["benchmarks"][b]["preference"]
        assert up["preference_change"] == pytest.approx(change) and down["preference_change"] == pytest.approx(-change)
        assert up["preference_se"] == pytest.approx(down["preference_se"]) and up["preference_se"] >= 0
        assert paired_change(right, right, b)["preference_se"] == 0.0
        assert (up["exact_match_change"], up["exact_match_se"]) == (1.0, 0.0)

    before = {"per_example": {"digits": {"id": [1, 2, 3, 4], "exact_match": [1, 0, 0, 1]}}}
    after = {"per_example": {"digits": {"id": [1, 2, 3, 4], "exact_match": [1, 1, 0, 0]}}}
    mixed = paired_change(before, after, "digits")  # per-example changes 0, +1, 0, -1
    assert mixed["exact_match_change"] == 0.0 and mixed["exact_match_se"] == pytest.approx((2 / 3) ** 0.5 / 2)

    shuffled = {"per_example": {b: {**r, "id": r["id"][::-1]} for b, r in right["per_example"].items()}}
    with pytest.raises(ValueError, match="not of the same examples"):
        paired_change(wrong, shuffled, "digits")
