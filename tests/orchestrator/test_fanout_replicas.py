"""One organisation, one address, two reward-node replicas: the orchestrator's channel spreads the
batches over both (round_robin over an ipv4: target on loopback) and a replica going away costs no
scores (UNAVAILABLE is retried on the other replica)."""
from __future__ import annotations

import asyncio

import torch

from services.common.config.run import FanoutSection
from services.common.config.sections import NodeEndpoint, TLSSection
from services.orchestrator.fanout import RewardFanout
from services.reward_node.client import ScoreGroup

from .conftest import FakeNode, FnRM

GROUPS = [ScoreGroup(prompt=f"prompt {g}", responses=[str(g), str(g + 1)], group_id=f"g{g}") for g in range(3)]


def _replica(calls: list[str], name: str) -> FakeNode:
    def score(prompt: str, response: str) -> float:
        calls.append(name)
        return float(response) if response.isdigit() else 0.0

    return FakeNode("bank", FnRM(score))


def test_two_replicas_share_the_batches_and_one_dying_loses_no_step(arun):
    calls: list[str] = []
    a, b = _replica(calls, "a"), _replica(calls, "b")

    async def scenario() -> tuple[list[str], list[str], list[bool]]:
        await asyncio.gather(a.start(), b.start())
        try:
            target = NodeEndpoint(node_id="bank", address=f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}",
                                  tls=TLSSection(insecure=True), timeout_s=10)
            async with RewardFanout([target], FanoutSection(step_deadline_s=10)) as fan:
                calls.clear()  # the warm-up and info calls of start-up
                ok = []
                for _ in range(8):
                    ok.append(bool((await fan.score(GROUPS)).mask.all()))
                both = list(calls)
                await a.stop()
                calls.clear()
                for _ in range(6):
                    result = await fan.score(GROUPS)
                    ok.append(bool(result.mask.all()) and result.responded == ["bank"])
                    torch.testing.assert_close(result.scores[0, :2], torch.tensor([0.0, 1.0]))
                return both, list(calls), ok
        finally:
            await asyncio.gather(a.stop(), b.stop(), return_exceptions=True)

    both, after, ok = arun(scenario())

    assert {"a", "b"} <= set(both), "round_robin should send batches to both replicas"
    assert min(both.count("a"), both.count("b")) >= len(both) // 4  # spread, not one replica with a stray call
    assert after and set(after) == {"b"}  # the stopped replica gets nothing more
    assert all(ok), ok  # every step scored every answer, before and after the replica went away


class _Entering(FnRM):
    """Records the replica's name when a batch arrives (before the scoring delay)."""

    def __init__(self, fn, name: str, entered: list[str]) -> None:
        super().__init__(fn)
        self.name, self.entered = name, entered

    def prepare(self, prompts, images, responses):
        self.entered.append(self.name)
        return super().prepare(prompts, images, responses)


def test_a_replica_killed_mid_call_is_retried_on_the_other(arun):
    entered: list[str] = []

    def score(prompt: str, response: str) -> float:
        return float(response) if response.isdigit() else 0.0

    a = FakeNode("bank", _Entering(score, "a", entered))
    b = FakeNode("bank", _Entering(score, "b", entered))

    async def scenario():
        await asyncio.gather(a.start(), b.start())
        try:
            target = NodeEndpoint(node_id="bank", address=f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}",
                                  tls=TLSSection(insecure=True), timeout_s=10)
            async with RewardFanout([target], FanoutSection(step_deadline_s=10)) as fan:
                a.rm.delay_s = 1.0  # a call on replica a is still in flight when a goes away
                for _ in range(4):
                    entered.clear()
                    task = asyncio.ensure_future(fan.score(GROUPS))
                    await asyncio.sleep(0.3)
                    if entered[:1] == ["a"]:
                        await a.stop()
                        return await task, list(entered)
                    await task
                raise AssertionError("round_robin never sent a call to replica a")
        finally:
            await asyncio.gather(a.stop(), b.stop(), return_exceptions=True)

    result, seen = arun(scenario())

    assert seen[0] == "a" and "b" in seen  # started on a, finished on b
    assert result.responded == ["bank"] and bool(result.mask.all())
