"""Several policy-sampler endpoints as one rollout source: a step's prompts split across them.

Rules, like the reward nodes' fan-out:
- A replica is *current* when it answered and serves the run's latest pushed version. Only current
  replicas generate; a step's prompts are cut into contiguous chunks, one per current replica (sizes
  differ by at most one), each with its own seed derived from the step's, and put back in prompt order.
- A push goes to every replica with the same version; a replica whose push fails is not current
  until a later push (or a re-push on re-admission) succeeds. The push fails only when no replica took it.
- A replica that fails a Generate is dropped for the step and its chunk is generated again by the
  others. Before each step, replicas that are not current are probed (GetInfo): one that answers at
  an older version gets the latest weights pushed again (kept in memory) and rejoins.
- When no replica is current (the only sampler was killed and is restarting), the step probes
  again with a growing pause for up to ``wait_s`` and fails only after that; a push that no
  replica took is kept and re-pushed on re-admission, so no rollout comes from stale weights.

Which replica samples which prompt changes the random streams, so a run's samples depend on the
number of current replicas; one replica behaves exactly like ``RemoteSampler``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.common.config import EndpointSection
from services.common.errors import NotReady
from services.orchestrator.prompts import Prompt
from services.orchestrator.rollouts import RemoteSampler, Rollouts, RolloutSource

log = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003
_SEED_MODULUS = 2**31 - 1


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of ``parts`` contiguous chunks of ``n`` items (sizes differ by at most one; none empty)."""
    parts = max(1, min(parts, n))
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


class SamplerPool(RolloutSource):
    """Rollouts from several samplers; see the module docstring."""

    def __init__(self, endpoints: Sequence[EndpointSection], wait_s: float = 0.0) -> None:
        if not endpoints:
            raise ValueError("a sampler pool needs at least one endpoint")
        self.endpoints = {ep.address: ep for ep in endpoints}
        self.replicas = {ep.address: RemoteSampler(ep) for ep in endpoints}
        self.version = 0  # the run's latest version (what every current replica serves)
        self.serving: dict[str, int | None] = dict.fromkeys(self.replicas)  # None: not reachable
        self._latest: tuple[int, str, bytes, str] | None = None  # the last push, to re-push on re-admission
        self.last_split: dict[str, int] = {}  # prompts per replica in the last step (observability, tests)
        self.wait_s = wait_s

    @property
    def current(self) -> list[str]:
        return [a for a, v in self.serving.items() if v is not None and v == self.version]

    async def _info(self, address: str) -> None:
        try:
            self.serving[address] = await self.replicas[address].start()
        except NotReady as exc:
            log.warning("%s", exc)
            self.serving[address] = None

    async def start(self) -> int:
        await asyncio.gather(*(self._info(a) for a in self.replicas))
        answered = [v for v in self.serving.values() if v is not None]
        if not answered:
            raise NotReady(f"no sampler answered ({', '.join(self.replicas)})")
        # The run pushes max + 1 to all of them unless every replica is fresh (version 0).
        self.version = max(answered)
        return self.version

    async def _readmit(self) -> None:
        lagging = [a for a in self.replicas if a not in self.current]
        if not lagging:
            return
        # Fresh channels for the probe: a channel to a peer that was down keeps its reconnect back-off
        # (seconds) and would fail the probe of a replica that is back (as the fan-out does for nodes).
        for a in lagging:
            old, self.replicas[a] = self.replicas[a], RemoteSampler(self.endpoints[a])
            await old.close()
        await asyncio.gather(*(self._info(a) for a in lagging))
        if self._latest is None:
            return
        stale = [a for a in lagging if self.serving[a] is not None and self.serving[a] != self.version]
        await asyncio.gather(*(self._push_one(a, *self._latest) for a in stale))
        for a in stale:
            if self.serving[a] == self.version:
                log.info("sampler %s rejoined at version %d", a, self.version)

    async def generate(self, prompts: Sequence[Prompt], group_size: int, *, temperature: float,
                       max_new_tokens: int, seed: int) -> Rollouts:
        await self._readmit()
        groups: list[list | None] = [None] * len(prompts)
        todo = list(range(len(prompts)))
        self.last_split = {}
        attempt = 0
        while todo:
            live = self.current or await self._wait_for_a_replica()
            chunks = split_evenly(len(todo), len(live))
            calls = []
            for k, (s, e) in enumerate(chunks):
                rows = todo[s:e]
                chunk_seed = (seed + _SEED_STRIDE * (attempt * len(self.replicas) + k)) % _SEED_MODULUS
                calls.append(self._generate_one(live[k], [prompts[i] for i in rows], group_size,
                                                temperature, max_new_tokens, chunk_seed))
            results = await asyncio.gather(*calls)
            left = []
            for (s, e), address, out in zip(chunks, live, results, strict=True):
                rows = todo[s:e]
                if out is None:
                    left.extend(rows)  # that replica is out: its prompts go to the others
                    continue
                self.last_split[address] = self.last_split.get(address, 0) + len(rows)
                for i, grp in zip(rows, out.groups, strict=True):
                    groups[i] = grp
            todo, attempt = left, attempt + 1
        return Rollouts([g for g in groups if g is not None], self.version)

    async def _wait_for_a_replica(self) -> list[str]:
        """Probe (and re-push to) the replicas until one is current, for up to ``wait_s``."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.wait_s, 0.25
        while True:
            await self._readmit()
            if self.current:
                return self.current
            left = deadline - loop.time()
            if left <= 0:
                raise NotReady(f"no sampler serves version {self.version} ({', '.join(self.replicas)}); "
                               f"waited {self.wait_s:.0f}s (sampler_wait_s)")
            log.warning("no sampler serves version %d; probing again in %.1fs", self.version, min(pause, left))
            await asyncio.sleep(min(pause, left))
            pause = min(2 * pause, 5.0)

    async def _generate_one(self, address: str, prompts: list[Prompt], group_size: int, temperature: float,
                            max_new_tokens: int, seed: int) -> Rollouts | None:
        try:
            out = await self.replicas[address].generate(prompts, group_size, temperature=temperature,
                                                        max_new_tokens=max_new_tokens, seed=seed)
        except NotReady as exc:
            log.warning("dropping sampler for this step: %s", exc)
            self.serving[address] = None
            return None
        if out.policy_version != self.version:
            log.warning("sampler %s answered version %d, the run is at %d: dropped", address, out.policy_version,
                        self.version)
            self.serving[address] = out.policy_version
            return None
        return out

    async def _push_one(self, address: str, version: int, kind: str, payload: bytes, config_json: str) -> None:
        try:
            await self.replicas[address].push(version, kind, payload, config_json)
        except (NotReady, RuntimeError) as exc:
            log.warning("sampler %s missed version %d: %s", address, version, exc)
            if self.serving[address] == version:
                self.serving[address] = None
            return
        self.serving[address] = version

    async def push(self, version: int, kind: str, payload: bytes, config_json: str) -> None:
        self._latest = (version, kind, payload, config_json)
        await asyncio.gather(*(self._push_one(a, version, kind, payload, config_json) for a in self.replicas))
        self.version = version
        if not self.current and not self.wait_s:
            raise NotReady(f"no sampler took version {version} ({', '.join(self.replicas)})")
        # else: kept in _latest; the next step waits for a replica and re-pushes it first

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas.values()), return_exceptions=True)


__all__ = ["SamplerPool", "split_evenly"]
