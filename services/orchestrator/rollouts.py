"""Where a run's rollouts come from: the remote policy sampler over gRPC, or the trainer's own
policy in process (experiments, tests, a one-machine run).

Both answer the same two questions: "sample G completions per prompt, with their log-probs and
the policy version that made them" and "serve these weights as version v from now on". The
run loop does not know which one it talks to.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.completions import Completion
from services.common.config import EndpointSection
from services.common.errors import NotReady
from services.orchestrator.prompts import Prompt


@dataclass(frozen=True)
class Rollouts:
    """One step's completions: ``groups[i]`` holds the G samples of prompt i; all made by ``policy_version``."""

    groups: list[list[Completion]]
    policy_version: int


class RolloutSource(abc.ABC):
    """Samples grouped completions and takes weight pushes."""

    @abc.abstractmethod
    async def start(self) -> int:
        """Connect / load; returns the policy version the source serves now."""

    @abc.abstractmethod
    async def generate(self, prompts: Sequence[Prompt], group_size: int, *, temperature: float,
                       max_new_tokens: int, seed: int) -> Rollouts:
        """G completions per prompt, in prompt order."""

    @abc.abstractmethod
    async def push(self, version: int, kind: str, payload: bytes, config_json: str) -> None:
        """Serve these weights (a LoRA adapter or full weights, safetensors) as ``version``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release channels."""


@contextlib.asynccontextmanager
async def _sampler_errors(endpoint: EndpointSection, what: str) -> AsyncIterator[None]:
    """A failed sampler call becomes a domain error that names the sampler and the status, and for
    a TLS failure which side refused the connection and why (services.common.grpc.tls_diagnosis)."""
    import grpc

    from services.common.grpc.tls_diagnosis import adescribe_rpc_error

    try:
        yield
    except grpc.RpcError as exc:
        status = await adescribe_rpc_error(exc, endpoint.address, endpoint.tls)
        raise NotReady(f"sampler at {endpoint.address}: {what} failed with {status}") from None


class RemoteSampler(RolloutSource):
    """The policy_sampler service."""

    def __init__(self, endpoint: EndpointSection) -> None:
        from services.policy_sampler.client import SamplerClient

        self.endpoint = endpoint
        self._client = SamplerClient(endpoint)

    async def start(self) -> int:
        async with _sampler_errors(self.endpoint, "GetInfo"):
            info = await self._client.get_info()
        return info.policy_version

    async def generate(self, prompts: Sequence[Prompt], group_size: int, *, temperature: float,
                       max_new_tokens: int, seed: int) -> Rollouts:
        from services.policy_sampler.client import SamplerPrompt

        async with _sampler_errors(self.endpoint, "Generate"):
            out = await self._client.generate(
                [SamplerPrompt(p.prompt_id, p.question, p.image_png) for p in prompts], group_size,
                temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
            )
        return Rollouts([list(g) for g in out.groups], out.policy_version)

    async def push(self, version: int, kind: str, payload: bytes, config_json: str) -> None:
        async with _sampler_errors(self.endpoint, f"UpdateWeights (version {version})"):
            result = await self._client.push_weights(version, payload, kind, adapter_config_json=config_json)  # type: ignore[arg-type]
        if result.version != version:
            raise RuntimeError(f"sampler answered version {result.version} to a push of version {version}")

    async def close(self) -> None:
        await self._client.close()


class LocalSampler(RolloutSource):
    """Samples from the trainer's policy object itself: a push only bumps the version, since the
    weights already are the trained ones. Runs on the caller's worker thread, never beside a step."""

    def __init__(self, policy: Any, executor: Any = None) -> None:
        self._policy = policy  # a VLM (the trainer's, peft-wrapped or not)
        self._executor = executor
        self.version = 0

    async def start(self) -> int:
        return self.version

    async def generate(self, prompts: Sequence[Prompt], group_size: int, *, temperature: float,
                       max_new_tokens: int, seed: int) -> Rollouts:
        version = self.version  # the weights this call samples from, whatever is pushed meanwhile
        loop = asyncio.get_running_loop()
        groups = await loop.run_in_executor(self._executor, lambda: self._policy.generate(
            [p.question for p in prompts], [p.image for p in prompts], num_return_sequences=group_size,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))
        samples = [[Completion(g.text, tuple(g.token_ids), tuple(g.logprobs), g.finish_reason) for g in grp]
                   for grp in groups]
        return Rollouts(samples, version)

    async def push(self, version: int, kind: str, payload: bytes, config_json: str) -> None:
        self.version = version


__all__ = ["LocalSampler", "RemoteSampler", "RolloutSource", "Rollouts"]
