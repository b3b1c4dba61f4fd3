"""The prototype's Gaussian mechanism: calibration in closed form, and what a real node publishes."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from services.reward_node.privacy import epsilon_for, gaussian_delta, mean_sensitivity, sigma_for

from .conftest import node_settings


def test_analytic_gaussian_calibration_matches_the_published_value() -> None:
    # Balle & Wang (2018): sensitivity 1, (1, 1e-5)-DP needs sigma ~= 3.73 (the classic bound says 4.84).
    sigma = sigma_for(1.0, 1e-5, 1.0)

    assert sigma == pytest.approx(3.73, abs=0.01)
    assert sigma < math.sqrt(2 * math.log(1.25 / 1e-5))
    assert gaussian_delta(sigma, 1.0, 1.0) == pytest.approx(1e-5, rel=1e-6)
    assert epsilon_for(sigma, 1e-5, 1.0) == pytest.approx(1.0, rel=1e-6)


def test_more_noise_or_more_prompts_give_a_smaller_epsilon() -> None:
    assert mean_sensitivity(100) == pytest.approx(0.02)
    assert epsilon_for(0.1, 1e-5, mean_sensitivity(100)) < epsilon_for(0.05, 1e-5, mean_sensitivity(100))
    assert epsilon_for(0.05, 1e-5, mean_sensitivity(400)) < epsilon_for(0.05, 1e-5, mean_sensitivity(100))
    assert epsilon_for(0.0, 1e-5, 1.0) == math.inf


def test_publishing_adds_calibrated_noise_by_default_and_reports_epsilon_delta(node, light_rm, arun, caplog) -> None:
    n = light_rm.metadata["data"]["n_train_pairs"]
    exact = node_settings(prototype={"publish": True, "noise_sigma": 0.0})

    async def scenario():
        async with node(node_settings(prototype={"publish": True}), light_rm) as running, running.client() as client:
            default = await client.info()
        async with node(exact, light_rm) as running, running.client() as client:
            return default, await client.info()

    with caplog.at_level(logging.WARNING):
        default, opted_out = arun(scenario())

    sigma = sigma_for(1.0, 1e-5, 2.0 / n)
    assert default.prototype_noise_sigma == pytest.approx(sigma, rel=1e-6)  # was 0.0: the exact mean
    assert (default.prototype_epsilon, default.prototype_delta) == (pytest.approx(1.0, rel=1e-6), pytest.approx(1e-5))
    assert 0.5 * sigma < float((torch.tensor(default.prototype) - light_rm.prototype).std()) < 1.5 * sigma
    assert opted_out.prototype_noise_sigma == 0.0 and opted_out.prototype_epsilon == math.inf
    assert torch.allclose(torch.tensor(opted_out.prototype), light_rm.prototype)
    assert any("EXACT mean" in r.getMessage() for r in caplog.records)
