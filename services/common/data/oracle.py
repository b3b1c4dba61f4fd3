"""Ground-truth preference oracles, kept as code so evaluation can score ANY answer.

A client's true preference for a response y to example x is

    score(x, y) = 1.00 * vqa_accuracy(y, x.answers)          correctness, in [0, 1]
                + 0.25 * [client.style in detect_styles(y)]  its own answer style
                + 0.15 * [format_ok(y)]                      one short line starting with the answer
                - 0.01 * max(0, words(y) - budget)           brevity beyond the style's word budget

with budget = 12 words for a "justified" client and 3 for the terse styles ("word", "digits").
Correctness dominates: a wrong answer that no annotator gave scores at most 0.40, a correct one at least 0.80 unless it rambles
far past the budget, so every client prefers any correct well-formed answer over any wrong one, and
among correct answers prefers its own style (+0.25).

The server oracle (router pairs) has a 16-word budget and, by default, no style term: it only
separates correct from wrong and well-formed from rambling. Given per-benchmark styles (a world with
`router_pair_styles: domain`) it also prefers, on each benchmark, the answer style of the client
whose home that benchmark is: the server knows how each domain wants its answers written (its
conventions), not which answers are right.
"""

from __future__ import annotations

from dataclasses import dataclass

from .answers import detect_styles, format_ok, vqa_accuracy
from .config import ClientSpec
from .records import VQAExample


@dataclass(frozen=True)
class OracleWeights:
    """The coefficients of the score formula (module docstring)."""

    correctness: float = 1.0
    style: float = 0.25
    format: float = 0.15
    length: float = 0.01


JUSTIFIED_BUDGET = 12
TERSE_BUDGET = 3
NEUTRAL_BUDGET = 16


class PreferenceOracle:
    """score = correctness + style match + format - length penalty; style=None means neutral."""

    def __init__(self, style: str | None, weights: OracleWeights | None = None, name: str = "oracle") -> None:
        self.style = style
        self.weights = weights or OracleWeights()
        self.name = name
        if style is None:
            self.budget = NEUTRAL_BUDGET
        else:
            self.budget = JUSTIFIED_BUDGET if style == "justified" else TERSE_BUDGET

    def style_for(self, example: VQAExample) -> str | None:
        """The answer style this oracle rewards on this example (None: no style term)."""
        return self.style

    def components(self, example: VQAExample, response: str) -> dict[str, float]:
        """The named parts of the score (unweighted), plus `overall` (the weighted sum)."""
        w = self.weights
        acc = vqa_accuracy(response, example.answers)
        wanted = self.style_for(example)
        style = float(wanted is not None and wanted in detect_styles(response))
        fmt = float(format_ok(response))
        over = float(max(0, len(response.split()) - self.budget))
        overall = w.correctness * acc + w.style * style + w.format * fmt - w.length * over
        return {"correctness": acc, "style": style, "format": fmt, "excess_words": over, "overall": overall}

    def score(self, example: VQAExample, response: str) -> float:
        return self.components(example, response)["overall"]

    def prefers(self, example: VQAExample, a: str, b: str, margin: float = 0.0) -> bool:
        """True when a beats b by more than margin."""
        return self.score(example, a) - self.score(example, b) > margin


class ClientOracle(PreferenceOracle):
    """A client's true preference, from its spec's style (label noise is not part of the truth)."""

    def __init__(self, spec: ClientSpec, weights: OracleWeights | None = None) -> None:
        super().__init__(spec.style, weights, name=spec.name)
        self.spec = spec


class ServerOracle(PreferenceOracle):
    """The server-side oracle that labels the router pairs: neutral about style unless given each
    benchmark's conventional style (benchmarks left out stay neutral)."""

    def __init__(self, styles: dict[str, str] | None = None, weights: OracleWeights | None = None) -> None:
        super().__init__(None, weights, name="server")
        self.styles = dict(styles or {})

    def style_for(self, example: VQAExample) -> str | None:
        return self.styles.get(example.benchmark)
