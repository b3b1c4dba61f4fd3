"""The centralised (pooled) and FedAvg reward-model baselines of services.pipeline.baselines."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.config import ConfigError
from services.pipeline.baselines import (
    average_states,
    merge_moments,
    pooled_data,
    train_fedavg_rm,
    train_pooled_rm,
)
from services.reward_node.checkpoint import load_checkpoint
from services.reward_node.train import train_rm
from tests.reward_node.conftest import node_settings

TRAIN = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "max_train_pairs": 60, "grounding_epochs": 0}


def test_average_states_is_the_weighted_mean_of_float_tensors() -> None:
    a = {"w": torch.tensor([0.0, 4.0]), "steps": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 1.0]), "steps": torch.tensor(9)}

    out = average_states([a, b], [1, 2])

    torch.testing.assert_close(out["w"], torch.tensor([2.0, 2.0]))
    assert int(out["steps"]) == 3  # integer buffers are not averaged


def test_merged_moments_equal_the_statistics_of_the_union() -> None:
    parts = [torch.tensor([1.0, 2.0, 6.0]), torch.tensor([-1.0, 0.5]), torch.tensor([10.0])]
    moments = [(p.numel(), float(p.mean()), float(((p - p.mean()) ** 2).sum())) for p in parts]

    mean, std = merge_moments(moments)

    union = torch.cat(parts)
    assert mean == pytest.approx(float(union.mean()))
    assert std == pytest.approx(float(union.std(unbiased=False)))


def test_pooled_data_holds_every_clients_pairs(world_dir: Path) -> None:
    data = pooled_data(world_dir, ["clinic", "bank"], "central")

    from services.reward_node.data import load_node_data

    clinic, bank = load_node_data(world_dir, "clinic"), load_node_data(world_dir, "bank")
    assert data.node_id == "central"
    for split in ("train", "test"):
        assert sorted(p.id for p in data.pairs[split]) == sorted(p.id for p in clinic.pairs[split] + bank.pairs[split])
        assert {p.id[:4] for p in data.pairs[split][:2]} == {"clin", "bank"}  # interleaved, so a prefix has both
    assert data.data_sha256 not in (clinic.data_sha256, bank.data_sha256)


def test_pooled_rm_is_a_servable_checkpoint_trained_on_the_union(world_dir: Path, tmp_path: Path) -> None:
    settings = node_settings(node_id="central", train={**TRAIN, "epochs": 1, "max_train_pairs": None})

    result = train_pooled_rm(settings, world_dir, ["clinic", "bank", "school"], out_dir=tmp_path / "central")

    loaded = load_checkpoint(result.checkpoint)
    assert loaded.metadata["node_id"] == "central"
    assert loaded.metadata["data"]["n_train_pairs"] == 3 * 200
    assert loaded.metadata["held_out_accuracy"] > 0.55


@pytest.mark.parametrize("grounding_epochs", [0, 2])
def test_fedavg_of_one_client_for_one_round_is_its_own_training(world_dir: Path, tmp_path: Path,
                                                                 grounding_epochs: int) -> None:
    settings = node_settings(node_id="bank", train={**TRAIN, "grounding_epochs": grounding_epochs})
    own = train_rm(settings.model_copy(update={"data_dir": world_dir}), out_dir=tmp_path / "own")

    fed = train_fedavg_rm(settings, world_dir, ["bank"], rounds=1, local_epochs=TRAIN["epochs"],
                          out_dir=tmp_path / "fed")

    for k, v in own.model.state_dict().items():
        torch.testing.assert_close(fed.model.state_dict()[k], v)


def test_fedavg_over_three_clients_learns_and_standardises(world_dir: Path, tmp_path: Path) -> None:
    settings = node_settings(node_id="fedavg", train={**TRAIN, "max_train_pairs": 120})

    result = train_fedavg_rm(settings, world_dir, ["clinic", "bank", "school"], rounds=3, local_epochs=1,
                             out_dir=tmp_path / "fedavg")

    meta = load_checkpoint(result.checkpoint).metadata
    assert meta["training"]["objective"] == "bradley_terry_fedavg"
    assert len(meta["training"]["loss_per_round"]) == 3
    assert meta["held_out_accuracy"] > 0.55
    assert abs(meta["score_mean"]) < 1.0 and 0.3 < meta["score_std"] < 3.0  # standardised on the union


def test_fedavg_refuses_zero_rounds(world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rounds"):
        train_fedavg_rm(node_settings(node_id="fedavg"), world_dir, ["bank"], rounds=0, local_epochs=1,
                        out_dir=tmp_path / "x")
