"""Which styles the server's warm-start answers are written in."""
from __future__ import annotations

from pathlib import Path

from services.common.data.answers import detect_styles
from services.common.data.world import load_world
from services.pipeline.sft import sft_examples


def _styles_by_benchmark(world, answer_styles: str) -> dict[str, list[frozenset[str]]]:
    bench = {ex.question: ex.benchmark for ex in world.sft_examples()}
    out: dict[str, list[frozenset[str]]] = {}
    for ex in sft_examples(world, seed=0, answer_styles=answer_styles):
        out.setdefault(bench[ex.question], []).append(detect_styles(ex.answer))
    return out


def test_every_style_by_default_and_each_domain_in_its_convention_on_request(world_dir: Path) -> None:
    world = load_world(world_dir)
    conventions = world.config.domain_styles()
    assert len(set(conventions.values())) > 1  # the check has styles to tell apart

    mixed = _styles_by_benchmark(world, "all")
    assert {"digits", "justified"} <= set().union(*(s for styles in mixed.values() for s in styles))

    domain = _styles_by_benchmark(world, "domain")
    assert set(domain) == set(conventions)
    for bench, style in conventions.items():
        # an answer with no number in it ("red") reads as both terse styles
        assert all(style in s for s in domain[bench]), (bench, style)
