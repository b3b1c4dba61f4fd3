"""NodeCalibration: warm start, exact running statistics, masks, window, floor, order, state."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from services.common.config.run import RouterSection
from services.orchestrator.calibration import NodeCalibration

NAN = float("nan")


def cfg(prior: float = 0.0, window: float = 0.0, floor: float = 1e-3) -> RouterSection:
    return RouterSection(calibration_prior_count=prior, calibration_window=window, calibration_std_floor=floor)


def info(mean: float, std: float) -> SimpleNamespace:
    return SimpleNamespace(score_mean=mean, score_std=std)


def test_warm_start_uses_the_published_mean_and_std() -> None:
    cal = NodeCalibration(["a"], {"a": info(2.0, 3.0)}, cfg(prior=4))

    z = cal.calibrate(torch.tensor([[5.0, -1.0]]), torch.tensor([[True, True]]))

    assert cal.mean_std("a") == (2.0, 3.0)
    assert_close(z, torch.tensor([[1.0, -1.0]]))


def test_a_node_without_statistics_passes_raw_scores_through() -> None:
    cal = NodeCalibration(["a", "b"], {"a": info(0.0, 0.0)}, cfg(prior=8))  # std 0: not a usable prior

    z = cal.calibrate(torch.tensor([[1.5], [-2.0]]), torch.ones(2, 1, dtype=torch.bool))

    assert_close(z, torch.tensor([[1.5], [-2.0]]))


def test_update_gives_exact_population_mean_and_std() -> None:
    cal = NodeCalibration(["a"], cfg=cfg())

    cal.update(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4, dtype=torch.bool))
    first = cal.mean_std("a")
    cal.update(torch.tensor([[10.0]]), torch.ones(1, 1, dtype=torch.bool))

    assert first == pytest.approx((2.5, math.sqrt(1.25)))
    assert cal.mean_std("a") == pytest.approx((4.0, math.sqrt(10.0)))  # of [1, 2, 3, 4, 10]


def test_prior_pseudo_counts_merge_with_data() -> None:
    cal = NodeCalibration(["a"], {"a": info(0.0, 1.0)}, cfg(prior=4))

    cal.update(torch.tensor([[2.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))

    # n = 6, mean = 4/6, M2 = 4 (prior) + 0 + (2 - 0)^2 * 4 * 2 / 6
    assert cal.mean_std("a") == pytest.approx((2 / 3, math.sqrt((4 + 32 / 6) / 6)))


def test_masked_entries_stay_nan_and_do_not_enter_the_statistics() -> None:
    cal = NodeCalibration(["a", "b"], cfg=cfg())
    scores = torch.tensor([[1.0, 99.0, 3.0], [NAN, 5.0, 7.0]])
    mask = torch.tensor([[True, False, True], [False, True, True]])

    cal.update(scores, mask)
    z = cal.calibrate(scores, mask)

    assert cal.mean_std("a") == pytest.approx((2.0, 1.0))
    assert cal.mean_std("b") == pytest.approx((6.0, 1.0))
    assert torch.isnan(z[0, 1]) and torch.isnan(z[1, 0])
    assert_close(z[mask], torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_step_calibrates_with_the_statistics_from_before_the_step() -> None:
    cal = NodeCalibration(["a"], {"a": info(0.0, 1.0)}, cfg(prior=2))

    z = cal.step(torch.tensor([[4.0, 4.0]]), torch.ones(1, 2, dtype=torch.bool))

    assert_close(z, torch.tensor([[4.0, 4.0]]))  # old stats (0, 1), not the step's own
    assert cal.mean_std("a")[0] == pytest.approx(2.0)


def test_window_caps_the_effective_count() -> None:
    cal = NodeCalibration(["a"], {"a": info(0.0, 1.0)}, cfg(prior=4, window=4))

    cal.update(torch.tensor([[4.0]]), torch.ones(1, 1, dtype=torch.bool))

    # merge: n 5, mean 0.8, M2 = 4 + 16 * 4 / 5 = 16.8; cap: n 4, M2 = 16.8 * 4 / 5
    stats = cal.stats["a"]
    assert (stats.count, stats.mean, stats.m2) == pytest.approx((4.0, 0.8, 13.44))


def test_constant_scores_divide_by_the_std_floor() -> None:
    cal = NodeCalibration(["a"], cfg=cfg(floor=0.5))
    cal.update(torch.tensor([[3.0, 3.0, 3.0]]), torch.ones(1, 3, dtype=torch.bool))

    z = cal.calibrate(torch.tensor([[4.0]]), torch.ones(1, 1, dtype=torch.bool))

    assert_close(z, torch.tensor([[2.0]]))


def test_rows_can_follow_another_node_order() -> None:
    cal = NodeCalibration(["a", "b"], {"a": info(0.0, 1.0), "b": info(10.0, 2.0)}, cfg(prior=1))

    z = cal.calibrate(torch.tensor([[12.0], [1.0]]), torch.ones(2, 1, dtype=torch.bool), node_ids=["b", "a"])

    assert_close(z, torch.tensor([[1.0], [1.0]]))
    with pytest.raises(KeyError, match="c"):
        cal.calibrate(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), node_ids=["c"])
    with pytest.raises(ValueError, match="2 nodes"):
        cal.calibrate(torch.zeros(3, 1), torch.ones(3, 1, dtype=torch.bool))


def test_state_round_trips_through_json() -> None:
    cal = NodeCalibration(["a", "b"], {"a": info(1.0, 2.0)}, cfg(prior=3, window=50))
    cal.update(torch.tensor([[0.5, 7.0], [3.0, -1.0]]), torch.ones(2, 2, dtype=torch.bool))
    probe = torch.tensor([[2.0, -3.0], [0.0, 4.0]])
    mask = torch.tensor([[True, True], [False, True]])

    restored = NodeCalibration(["a", "b"], cfg=cfg())
    restored.load_state_dict(json.loads(json.dumps(cal.state_dict())))

    assert restored.state_dict() == cal.state_dict()
    assert_close(restored.calibrate(probe, mask), cal.calibrate(probe, mask), equal_nan=True)


def test_add_and_remove_nodes() -> None:
    cal = NodeCalibration(["a"], cfg=cfg(prior=2))

    cal.add_node("b", info(5.0, 1.0))
    cal.remove_node("a")

    assert cal.node_ids == ("b",) and cal.mean_std("b") == (5.0, 1.0)
