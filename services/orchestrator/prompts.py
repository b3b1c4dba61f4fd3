"""The server-side prompt stream of a run: the prompt pool (the world's, or an outside prompt dataset's)
in a seeded order, epoch by epoch.

The order of epoch e is a shuffle seeded with (seed, e), so a run's prompts depend only on the run
seed and on how many it has taken: the stream's whole state is (epoch, position), which is what a
checkpoint keeps to resume exactly.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from PIL import Image

from services.common.data.records import PoolPrompt
from services.common.data.sources import ImageSource


@dataclass(frozen=True)
class Prompt:
    """One RL prompt with what every party needs: text, the encoded image (sampler, nodes), the
    decoded image (trainer, router) and reference answers (rule reward; empty when unknown)."""

    prompt_id: str
    benchmark: str
    question: str
    image_png: bytes | None
    references: tuple[str, ...]

    @cached_property
    def image(self) -> Image.Image | None:
        if self.image_png is None:
            return None
        import io

        with Image.open(io.BytesIO(self.image_png)) as im:
            return im.convert("RGB")


class PromptStream:
    """Seeded, resumable iteration over a prompt pool."""

    def __init__(self, world: ImageSource, pool: Sequence[PoolPrompt], seed: int) -> None:
        if not pool:
            raise ValueError("the prompt pool is empty: nothing to train on")
        self._world = world
        self._pool = list(pool)
        self._seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self._pool)))
        random.Random(f"{self._seed}:{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[Prompt]:
        """The next ``n`` prompts, crossing into the next epoch (a new shuffle) when the pool runs out."""
        out: list[Prompt] = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            rec = self._pool[self._order[self.position]]
            self.position += 1
            out.append(Prompt(rec.id, rec.benchmark, rec.question,
                              self._world.image_bytes(rec.image) if rec.image else None, tuple(rec.answers)))
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)


__all__ = ["Prompt", "PromptStream"]
