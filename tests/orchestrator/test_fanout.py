"""Fan-out against real reward nodes on loopback: slots, chunking, deadlines, health, quorum, metrics."""
from __future__ import annotations

import math

import pytest
import torch

from services.common import metrics
from services.common.config.run import FanoutSection
from services.common.errors import AlreadyExists, NotFound
from services.orchestrator.fanout import FanoutResult, QuorumError, RewardFanout
from services.reward_node.client import ScoreGroup


def numbered(groups: list[int]) -> list[ScoreGroup]:
    """Groups whose responses are their global (group-major) index as text: "0", "1", ..."""
    out, n = [], 0
    for g, size in enumerate(groups):
        out.append(ScoreGroup(prompt=f"prompt {g}", responses=[str(n + i) for i in range(size)], group_id=f"g{g}"))
        n += size
    return out


def offset(base: float):
    """score = base + the response's number (the node's one-sample warm-up batch scores base)."""
    return lambda prompt, response: base + (float(response) if response.isdigit() else 0.0)


def failures(node_id: str, code: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "mor_orchestrator_node_failed_requests_total", {"node_id": node_id, "code": code}) or 0.0


def skipped(node_id: str) -> float:
    return metrics.REGISTRY.get_sample_value("mor_orchestrator_node_skipped_steps_total", {"node_id": node_id}) or 0.0


def score_batch_calls() -> float:
    return metrics.REGISTRY.get_sample_value(
        "mor_grpc_server_requests_total", {"service": "mor.v1.RewardNode", "method": "ScoreBatch", "code": "OK"}) or 0.0


def test_scores_land_in_their_node_row_and_group_major_column(arun, nodes) -> None:
    async def scenario() -> tuple[dict, FanoutResult]:
        async with nodes({"fa1": offset(0.0), "fa2": offset(100.0), "fa3": offset(1000.0)}) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection()) as fan:
                return dict(fan.infos), await fan.score(numbered([2, 3, 1]))

    infos, result = arun(scenario())

    expected = torch.tensor([[b + n for n in range(6)] for b in (0.0, 100.0, 1000.0)])
    assert result.node_ids == ("fa1", "fa2", "fa3")
    assert set(infos) == {"fa1", "fa2", "fa3"}
    torch.testing.assert_close(result.scores, expected)
    assert result.mask.all()
    assert result.responded == ["fa1", "fa2", "fa3"]
    assert all(o.error_code == "" and o.latency_s > 0 for o in result.outcomes.values())


def test_groups_are_split_by_the_nodes_max_batch_groups(arun, nodes) -> None:
    async def scenario() -> tuple[FanoutResult, float]:
        async with nodes({"fc1": offset(0.0)}, limits={"fc1": {"max_batch_groups": 2}}) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection()) as fan:
                before = score_batch_calls()
                result = await fan.score(numbered([1, 2, 1, 1, 2]))
                return result, score_batch_calls() - before

    result, calls = arun(scenario())

    torch.testing.assert_close(result.scores, torch.arange(7, dtype=torch.float32)[None])
    assert calls == 3


def test_a_slow_node_is_dropped_with_deadline_exceeded_and_the_step_goes_on(arun, nodes) -> None:
    async def scenario() -> FanoutResult:
        async with nodes({"fs1": offset(0.0), "fs2": offset(10.0), "fs3": offset(20.0)}) as running:
            running[1].rm.delay_s = 0.8
            eps = [running[0].endpoint(), running[1].endpoint(timeout_s=0.25), running[2].endpoint()]
            async with RewardFanout(eps, FanoutSection(min_nodes=2)) as fan:
                result = await fan.score(numbered([2]))
                assert fan.healthy["fs2"] is False
                return result

    before = failures("fs2", "DEADLINE_EXCEEDED")
    result = arun(scenario())

    assert result.responded == ["fs1", "fs3"]
    out = result.outcomes["fs2"]
    assert (out.responded, out.error_code) == (False, "DEADLINE_EXCEEDED")
    assert out.latency_s < 0.7
    assert not result.mask[1].any() and torch.isnan(result.scores[1]).all()
    torch.testing.assert_close(result.scores[2], torch.tensor([20.0, 21.0]))
    assert failures("fs2", "DEADLINE_EXCEEDED") == before + 1


def test_the_step_deadline_caps_every_node_timeout(arun, nodes) -> None:
    async def scenario() -> FanoutResult:
        async with nodes({"fd1": offset(0.0), "fd2": offset(1.0)}) as running:
            running[0].rm.delay_s = 0.8
            async with RewardFanout([n.endpoint(timeout_s=10.0) for n in running],
                                    FanoutSection(step_deadline_s=0.3)) as fan:
                return await fan.score(numbered([1]))

    result = arun(scenario())

    assert result.dropped == {"fd1": "DEADLINE_EXCEEDED"}
    assert result.outcomes["fd1"].latency_s < 0.7


def test_a_stopped_node_is_dropped_skipped_and_readmitted_after_restart(arun, nodes) -> None:
    async def scenario() -> list[FanoutResult]:
        async with nodes({"fr1": offset(0.0), "fr2": offset(10.0), "fr3": offset(20.0)}) as running:
            # A stopped node refuses the probe's connection at once, so the timeout only bounds how long a
            # restarted node may take to answer; 0.5 s failed once in CI with two other jobs on two cores.
            async with RewardFanout([n.endpoint() for n in running], FanoutSection(health_timeout_s=10.0)) as fan:
                rounds = [await fan.score(numbered([2]))]
                await running[2].stop()
                rounds.append(await fan.score(numbered([2])))  # dropped: its channel fails
                assert fan.healthy["fr3"] is False
                rounds.append(await fan.score(numbered([2])))  # skipped: the health probe fails
                await running[2].start()  # same port
                rounds.append(await fan.score(numbered([2])))  # probed SERVING: back in
                assert fan.healthy["fr3"] is True
                return rounds

    before_fail, before_skip = failures("fr3", "UNAVAILABLE"), skipped("fr3")
    first, dropped, skipped_round, back = arun(scenario())

    assert first.responded == ["fr1", "fr2", "fr3"]
    assert dropped.dropped == {"fr3": "UNAVAILABLE"}
    assert skipped_round.dropped == {"fr3": "SKIPPED_UNHEALTHY"}
    assert back.responded == ["fr1", "fr2", "fr3"]
    torch.testing.assert_close(back.scores[2], torch.tensor([20.0, 21.0]))
    assert failures("fr3", "UNAVAILABLE") == before_fail + 1
    assert skipped("fr3") == before_skip + 1
    assert metrics.REGISTRY.get_sample_value("mor_orchestrator_node_healthy_ratio", {"node_id": "fr3"}) == 1.0


def test_quorum_error_when_fewer_nodes_than_min_nodes_answer(arun, nodes) -> None:
    async def scenario() -> QuorumError:
        async with nodes({"fq1": offset(0.0), "fq2": offset(1.0)}) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection(min_nodes=2)) as fan:
                await running[1].stop()
                with pytest.raises(QuorumError) as info:
                    await fan.score(numbered([2]))
                return info.value

    before = metrics.REGISTRY.get_sample_value("mor_orchestrator_quorum_failed_steps_total") or 0.0
    err = arun(scenario())

    assert err.reason == "QUORUM_NOT_MET" and "min_nodes=2" in str(err)
    assert err.result is not None and err.result.responded == ["fq1"]
    assert metrics.REGISTRY.get_sample_value("mor_orchestrator_quorum_failed_steps_total") == before + 1


def test_a_node_down_at_start_is_unhealthy_not_fatal_and_joins_later(arun, nodes) -> None:
    async def scenario() -> tuple[dict, FanoutResult, FanoutResult]:
        async with nodes({"fb1": offset(0.0), "fb2": offset(5.0)}) as running:
            await running[1].stop()
            async with RewardFanout([n.endpoint() for n in running], FanoutSection(health_timeout_s=10.0)) as fan:
                health = dict(fan.healthy)
                first = await fan.score(numbered([1]))
                await running[1].start()
                return health, first, await fan.score(numbered([1]))

    health, first, later = arun(scenario())

    assert health == {"fb1": True, "fb2": False}
    assert first.dropped == {"fb2": "SKIPPED_UNHEALTHY"}
    assert later.responded == ["fb1", "fb2"]


def test_start_fails_without_quorum(arun, nodes) -> None:
    async def scenario() -> None:
        async with nodes({"fz1": offset(0.0)}) as running:
            await running[0].stop()
            fan = RewardFanout([running[0].endpoint(timeout_s=0.3)], FanoutSection())
            try:
                await fan.start()
            finally:
                await fan.close()

    with pytest.raises(QuorumError, match="0 of 1"):
        arun(scenario())


def test_add_and_remove_nodes_between_steps(arun, nodes) -> None:
    async def scenario() -> tuple[FanoutResult, FanoutResult]:
        async with nodes({"fm1": offset(0.0), "fm2": offset(7.0)}) as running:
            fan = RewardFanout([running[0].endpoint()], FanoutSection())
            async with fan:
                fan.add(running[1].endpoint())
                with pytest.raises(AlreadyExists):
                    fan.add(running[1].endpoint())
                both = await fan.score(numbered([1]))
                fan.remove("fm1")
                with pytest.raises(NotFound):
                    fan.remove("fm1")
                return both, await fan.score(numbered([1]))

    both, one = arun(scenario())

    assert both.node_ids == ("fm1", "fm2") and both.responded == ["fm1", "fm2"]
    torch.testing.assert_close(both.scores[:, 0], torch.tensor([0.0, 7.0]))
    assert one.node_ids == ("fm2",) and one.scores.tolist() == [[7.0]]


def test_non_finite_scores_are_masked_out(arun, nodes) -> None:
    async def scenario() -> FanoutResult:
        async with nodes({"fn1": lambda p, r: math.nan if r == "1" else 3.0}) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection()) as fan:
                return await fan.score(numbered([3]))

    result = arun(scenario())

    assert result.mask.tolist() == [[True, False, True]]
    assert result.responded == ["fn1"]


def test_empty_groups_are_refused() -> None:
    fan = RewardFanout([], FanoutSection())

    with pytest.raises(ValueError, match="at least one"):
        import asyncio

        asyncio.run(fan.score([ScoreGroup(prompt="q", responses=[])]))
