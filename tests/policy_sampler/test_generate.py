"""Grouped generation through a real sampler: shapes, version tag, determinism, log-prob agreement."""

from __future__ import annotations

import grpc
import pytest

from services.policy_sampler.backends.hf import slices
from services.policy_sampler.client import SamplerPrompt


def _prompts(red, chart) -> list[SamplerPrompt]:
    return [
        SamplerPrompt("p-red", "What colour is the shape?", red),
        SamplerPrompt("p-text", "Name a colour."),
        SamplerPrompt("p-chart", "Which bar is the tallest?", chart),
    ]


def test_grouped_generation_shapes_and_version_tag(serve, arun, red, chart) -> None:
    async def scenario():
        async with serve() as running:
            return await running.client.generate(_prompts(red, chart), group_size=3, seed=7, request_id="req-1")

    result = arun(scenario())

    assert result.prompt_ids == ("p-red", "p-text", "p-chart")
    assert result.policy_version == 0
    assert result.request_id == "req-1"
    assert [len(g) for g in result.groups] == [3, 3, 3]
    for group in result.groups:
        for sample in group:
            assert 1 <= len(sample.token_ids) <= 6  # the sampler default max_new_tokens
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(lp <= 0.0 for lp in sample.logprobs)
            assert sample.finish_reason in ("stop", "length")
            assert (sample.finish_reason == "length") == (len(sample.token_ids) == 6)


def test_image_and_special_tokens_are_never_generated(serve, arun, red, chart, tools) -> None:
    suppressed = set(tools.trainer_policy().suppress_ids)

    async def scenario():
        async with serve() as running:
            return await running.client.generate(_prompts(red, chart), group_size=4, seed=3, max_new_tokens=8)

    result = arun(scenario())

    generated = {t for group in result.groups for s in group for t in s.token_ids}
    assert generated and not generated & suppressed


def test_same_seed_same_completions_other_seed_others(serve, arun, red, chart) -> None:
    async def scenario():
        async with serve() as running:
            a = await running.client.generate(_prompts(red, chart), group_size=3, seed=11)
            b = await running.client.generate(_prompts(red, chart), group_size=3, seed=11)
            c = await running.client.generate(_prompts(red, chart), group_size=3, seed=12)
            return a, b, c

    a, b, c = arun(scenario())

    assert a.groups == b.groups
    assert [s.token_ids for g in a.groups for s in g] != [s.token_ids for g in c.groups for s in g]
    assert len({s.token_ids for s in a.groups[0]}) > 1  # a group holds different samples


def test_greedy_group_is_identical(serve, arun, red) -> None:
    async def scenario():
        async with serve() as running:
            return await running.client.generate([SamplerPrompt("p", "Colour?", red)], group_size=3, temperature=0.0)

    (group,) = arun(scenario()).groups

    assert len({s.token_ids for s in group}) == 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_agree_with_the_trainers_recomputation(serve, arun, red, chart, tools, temperature) -> None:
    prompts = _prompts(red, chart)

    async def scenario():
        async with serve() as running:
            return await running.client.generate(prompts, group_size=2, seed=5, temperature=temperature,
                                                 max_new_tokens=8)

    result = arun(scenario())
    questions = [p.text for p in prompts for _ in range(2)]
    images = [p.image for p in prompts for _ in range(2)]
    samples = [s for g in result.groups for s in g]

    recomputed = tools.recompute(tools.trainer_policy(), questions, images, [s.token_ids for s in samples], temperature)
    diff = tools.max_abs_diff(recomputed, [s.logprobs for s in samples])

    assert diff < 1e-4


def test_expected_policy_version_is_enforced(serve, arun, red) -> None:
    async def scenario():
        async with serve() as running:
            ok = await running.client.generate([SamplerPrompt("p", "Colour?", red)], 2, expected_policy_version=0)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await running.client.generate([SamplerPrompt("p", "Colour?", red)], 2, expected_policy_version=3)
            return ok.policy_version, err.value.code()

    version, code = arun(scenario())

    assert version == 0
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_large_requests_run_in_slices_with_the_same_shapes(serve, arun, red, chart) -> None:
    async def scenario():
        async with serve(hf={"max_batch_rows": 2}) as running:
            a = await running.client.generate(_prompts(red, chart), group_size=2, seed=1)
            b = await running.client.generate(_prompts(red, chart), group_size=2, seed=1)
            return a, b

    a, b = arun(scenario())

    assert [len(g) for g in a.groups] == [2, 2, 2]
    assert a.groups == b.groups


def test_slices_cover_every_prompt_once() -> None:
    assert slices(5, 4, 8) == [range(0, 2), range(2, 4), range(4, 5)]
    assert slices(3, 16, 8) == [range(0, 1), range(1, 2), range(2, 3)]  # a group never splits
    assert slices(3, 2, 256) == [range(0, 3)]
