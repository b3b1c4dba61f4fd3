"""Score, ScoreBatch and GetInfo through a real node serving the trained light RM."""
from __future__ import annotations

import urllib.request

import pytest
import torch

from services.reward_node.client import ScoreGroup
from services.reward_node.hybrid import HybridWeights, overall_stats

from .conftest import node_settings


def test_score_returns_one_score_per_response_equal_to_the_in_process_model(node, light_rm, samples, arun) -> None:
    s = samples[0]
    answers = [*s.answers, "nine because I counted", "blue"]

    async def scenario():
        async with node(node_settings(), light_rm) as running, running.client() as client:
            return await client.score(s.question, answers, s.image_png, request_id="req-1")

    reply = arun(scenario())

    expected = light_rm.model.score_batch([s.question] * 4, [s.image] * 4, answers)
    torch.testing.assert_close(torch.tensor(reply.scores, dtype=torch.float32), expected, rtol=1e-5, atol=1e-5)
    assert (reply.node_id, reply.model_version, reply.request_id) == ("bank", light_rm.model_version, "req-1")
    assert reply.parts == [{}, {}, {}, {}]


def test_return_parts_gives_weighted_parts_that_sum_to_overall(node, light_rm, samples, arun) -> None:
    settings = node_settings(model={"format_weight": 0.5, "length_weight": 0.25, "length_budget_words": 3})
    s = samples[1]
    answers = ["three", "3 because there are three shapes in the picture"]

    async def scenario():
        async with node(settings, light_rm) as running, running.client() as client:
            plain = await client.score(s.question, answers, s.image_png)
            return plain, await client.score(s.question, answers, s.image_png, return_parts=True)

    plain, parts = arun(scenario())

    assert plain.scores == pytest.approx(parts.scores)
    for overall, p in zip(parts.scores, parts.parts, strict=True):
        assert set(p) == {"rm", "format", "length"}
        assert sum(p.values()) == pytest.approx(overall)
    assert parts.parts[0]["format"] == 0.5 and parts.parts[0]["length"] == 0.0
    assert parts.parts[1]["length"] == pytest.approx(-0.25)  # 9 words, budget 3: capped at -1 x 0.25


def test_score_batch_matches_separate_score_calls_in_group_order(node, light_rm, samples, arun) -> None:
    groups = [ScoreGroup(s.question, s.answers, s.image_png, group_id=f"g{i}") for i, s in enumerate(samples[:4])]

    async def scenario():
        async with node(node_settings(), light_rm) as running, running.client() as client:
            batch = await client.score_batch(groups, request_id="b-1")
            single = [await client.score(g.prompt, g.responses, g.image) for g in groups]
            return batch, single

    batch, single = arun(scenario())

    assert [g.group_id for g in batch.groups] == ["g0", "g1", "g2", "g3"]
    for b, s in zip(batch.groups, single, strict=True):
        assert b.scores == pytest.approx(s.scores, abs=1e-5)
    assert (batch.node_id, batch.request_id) == ("bank", "b-1")


def test_get_info_describes_the_node_and_publishes_a_noisy_prototype(node, light_rm, arun) -> None:
    settings = node_settings(model={"format_weight": 0.2}, prototype={"publish": True, "noise_sigma": 0.05},
                             limits={"max_responses": 16, "max_batch_groups": 8})
    bare = node_settings()

    async def scenario():
        async with node(settings, light_rm) as running, running.client() as client:
            first, second = await client.info(), await client.info()
        async with node(bare, light_rm) as running, running.client() as client:
            unpublished = await client.info()
        return first, second, unpublished

    info, again, unpublished = arun(scenario())

    meta = light_rm.metadata
    assert (info.node_id, info.rm_kind, info.model_version, info.serving_state) == (
        "bank", "bt_light", light_rm.model_version, "serving")
    assert info.objectives == ["learned_preference", "format"]
    mean, std = overall_stats(meta["parts"], HybridWeights(format=0.2))
    assert (info.score_mean, info.score_std) == (pytest.approx(mean), pytest.approx(std))
    assert info.score_min is None and info.score_max is None
    assert (info.limits.max_responses, info.limits.max_batch_groups) == (16, 8)
    assert info.limits.allowed_mime_types == ["image/png", "image/jpeg"]
    clean = light_rm.prototype
    noisy = torch.tensor(info.prototype)
    assert noisy.shape == clean.shape and info.prototype_embedder.endswith("all-MiniLM-L6-v2")
    assert info.prototype_noise_sigma == pytest.approx(0.05)
    assert 0.03 < float((noisy - clean).std()) < 0.07  # noise of the configured size was added ...
    assert info.prototype == again.prototype  # ... once: asking again cannot average it away
    assert unpublished.prototype is None


def test_metrics_port_exports_node_metrics(node, light_rm, samples, arun) -> None:
    settings = node_settings(node_id="metrics-node", metrics={"enabled": True, "port": 0})
    s = samples[2]

    async def scenario() -> str:
        async with node(settings, light_rm) as running, running.client() as client:
            await client.score(s.question, s.answers, s.image_png)
            port = running.app.service.metrics_port
            return await __import__("asyncio").to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    text = arun(scenario())

    assert 'mor_reward_node_batch_size_samples_count{node_id="metrics-node"}' in text
    assert 'mor_reward_node_response_score_count{node_id="metrics-node"} 2.0' in text
    assert 'mor_reward_node_model_state_value{node_id="metrics-node"} 2.0' in text
    assert 'mor_reward_node_queue_depth_samples{node_id="metrics-node"}' in text
    assert 'mor_grpc_server_requests_total{code="OK",method="Score",service="mor.v1.RewardNode"}' in text
