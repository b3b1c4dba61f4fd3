"""The interface every generation engine implements, and what it returns.

A backend knows how to load a policy, sample groups of completions and apply prepared weights.
It knows nothing of versions, admission, metrics or gRPC: `services.policy_sampler.sampler.Sampler`
calls `generate` while holding the version gate for reading and `commit_weights` while holding it
for writing, so a backend only has to make each call self-contained.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from services.common.completions import Completion
from services.common.config.variants import SamplerBackendName
from services.policy_sampler.requests import PromptInput, PromptRules, SamplingOptions
from services.policy_sampler.weights import PreparedWeights, WeightsHeader

if TYPE_CHECKING:
    from services.common.config.services import SamplerSettings


class GenerationCancelled(Exception):
    """A generation ended early because its caller went away; nobody reads its result."""


@dataclass(frozen=True)
class ModelFacts:
    """What GetInfo says about the served model."""

    name: str
    arch: str


class SamplerBackend(abc.ABC):
    """A generation engine. Life cycle: `await load()`, then any number of `generate` /
    `prepare_weights` / `commit_weights`, then `await close()`."""

    name: ClassVar[SamplerBackendName]

    @classmethod
    @abc.abstractmethod
    def build(cls, settings: SamplerSettings) -> SamplerBackend:
        """The backend the sampler settings describe: the one factory signature of every backend
        (config.variants.SAMPLER_BACKENDS). Raises ConfigError when the machine cannot run it."""

    @abc.abstractmethod
    async def load(self) -> ModelFacts:
        """Build or load the initial policy (version 0). Heavy; runs once, before serving."""

    @abc.abstractmethod
    async def generate(
        self, prompts: Sequence[PromptInput], group_size: int, sampling: SamplingOptions
    ) -> list[list[Completion]]:
        """`group_size` completions per prompt, one list per prompt in input order. The same
        inputs, weights and seed give the same completions."""

    @abc.abstractmethod
    async def prepare_weights(self, header: WeightsHeader, payload: bytes) -> PreparedWeights:
        """Parse and validate an update without touching the serving weights; may run while
        generations are in flight. Raises a domain error for anything that would not apply."""

    @abc.abstractmethod
    async def commit_weights(self, prepared: PreparedWeights) -> None:
        """Make `prepared` the serving weights. Called with no generation in flight and none
        starting; must leave the old weights in place if it raises."""

    def prompt_rules(self) -> PromptRules:
        """What the loaded model refuses in prompt texts and how it counts their tokens; the
        default (no reserved tokens, characters for tokens) suits a backend without a tokenizer."""
        return PromptRules()

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine (threads, GPU memory)."""


__all__ = ["GenerationCancelled", "ModelFacts", "SamplerBackend"]
