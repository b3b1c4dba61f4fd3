"""Bradley-Terry training of both RM kinds on a modest world, and what the checkpoint holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.common.data import load_world
from services.reward_node.checkpoint import CheckpointError, load_checkpoint
from services.reward_node.train import TrainResult, bt_loss, lr_factor, pair_accuracy, train_rm

from .conftest import node_settings


@pytest.fixture(scope="session")
def trained_vlm(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """clinic's VLM RM (tiny Qwen2-VL backbone + LoRA) on the modest world."""
    out = tmp_path_factory.mktemp("rn-vlm") / "clinic"
    settings = node_settings(node_id="clinic", data_dir=str(world_dir),
                             model={"kind": "vlm", "checkpoint": str(out), "backbone": {"preset": "tiny"}},
                             train={"epochs": 5, "batch_size": 32, "lr": 4e-3})
    return train_rm(settings)


@pytest.fixture(params=["light", "vlm"])
def trained(request, trained_light: TrainResult) -> TrainResult:
    return trained_light if request.param == "light" else request.getfixturevalue("trained_vlm")


def test_bt_loss_and_pair_accuracy_closed_form() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])

    loss = bt_loss(chosen, rejected)

    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(0.5))
                 + torch.log(torch.sigmoid(torch.tensor(-2.0)))) / 3
    torch.testing.assert_close(loss, expected)
    assert pair_accuracy(chosen, rejected) == pytest.approx(0.5)  # win, tie (1/2), loss


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    assert [lr_factor(s, 10, 2) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2) == pytest.approx(1.0)
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)


def test_held_out_pair_accuracy_is_well_above_chance(trained: TrainResult, world_dir: Path) -> None:
    meta = trained.metadata
    world = load_world(world_dir)
    node = meta["node_id"]
    pairs = world.pairs(node, "test")
    model = load_checkpoint(trained.checkpoint).model
    images = [world.load_image(p.image) for p in pairs]

    chosen = model.score_batch([p.question for p in pairs], images, [p.chosen for p in pairs])
    rejected = model.score_batch([p.question for p in pairs], images, [p.rejected for p in pairs])

    assert meta["held_out_accuracy"] >= 0.65, meta["held_out_accuracy"]
    assert pair_accuracy(chosen, rejected) == pytest.approx(meta["held_out_accuracy"])
    assert meta["data"]["n_held_out_pairs"] == len(pairs) == 60
    # The report by pair kind and benchmark adds up to the pairs and agrees with the scores.
    for name in ("kind", "benchmark", "kind_benchmark"):
        assert sum(v["pairs"] for v in meta["held_out_by"][name].values()) == 60
    style = [i for i, p in enumerate(pairs) if p.kind == "style"]
    assert meta["held_out_by"]["kind"]["style"]["accuracy"] == pytest.approx(pair_accuracy(chosen[style], rejected[style]))
    ground = meta["grounding"]
    assert ground["examples"] > 0 and len(ground["loss_per_epoch"]) == ground["epochs"] == 12


def test_checkpoint_round_trip_gives_identical_scores(trained: TrainResult, samples) -> None:
    prompts = [s.question for s in samples for _ in s.answers]
    images = [s.image for s in samples for _ in s.answers]
    answers = [a for s in samples for a in s.answers]

    reloaded = load_checkpoint(trained.checkpoint)

    assert torch.equal(reloaded.model.score_batch(prompts, images, answers),
                       trained.model.score_batch(prompts, images, answers))
    assert reloaded.model_version == trained.metadata["model_version"]


def test_scores_are_standardised_on_the_training_answers(trained: TrainResult) -> None:
    meta = trained.metadata

    assert abs(meta["score_mean"]) < 0.5 and 0.5 < meta["score_std"] < 1.5  # held-out: close to N(0, 1)


def test_metadata_describes_the_model_without_any_raw_data(trained: TrainResult, world_dir: Path) -> None:
    meta = json.loads((trained.checkpoint / "metadata.json").read_text())
    world = load_world(world_dir)
    texts = {t for split in ("train", "test") for p in world.pairs(meta["node_id"], split)
             for t in (p.question, p.chosen, p.rejected, p.id, p.image) if len(t) >= 12}
    blobs = {p.relative_to(trained.checkpoint).as_posix(): p.read_bytes()
             for p in trained.checkpoint.rglob("*") if p.is_file()}

    leaks = [(name, t) for name, blob in blobs.items() for t in texts if t.encode() in blob]

    assert leaks == []
    assert set(meta["data"]) == {"sha256", "n_train_pairs", "n_held_out_pairs"}
    assert len(meta["data"]["sha256"]) == 64
    assert meta["architecture"]["kind"] == meta["kind"] == trained.model.kind
    for key in ("held_out_accuracy", "score_mean", "score_std", "model_version", "files", "parts", "training"):
        assert key in meta
    assert set(meta["files"]) == set(blobs) - {"metadata.json"}


def test_vlm_checkpoint_keeps_the_merged_backbone_and_records_lora(trained_vlm: TrainResult) -> None:
    arch = trained_vlm.metadata["architecture"]

    assert (trained_vlm.checkpoint / "backbone" / "config.json").is_file()
    assert arch["lora"] == {"rank": 8, "alpha": 16.0}
    assert not any("lora_" in name for name, _ in trained_vlm.model.named_parameters())  # merged for serving


def test_a_changed_checkpoint_file_is_refused(trained_light: TrainResult, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(trained_light.checkpoint, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(copy)


def test_missing_data_dir_is_a_config_error(tmp_path: Path) -> None:
    from services.common.config import ConfigError
    from services.reward_node.data import DataError

    with pytest.raises(ConfigError, match="data_dir"):
        train_rm(node_settings(model={"checkpoint": str(tmp_path / "c")}))
    with pytest.raises(DataError, match="neither a world"):
        train_rm(node_settings(data_dir=str(tmp_path), model={"checkpoint": str(tmp_path / "c")}))


def test_the_same_model_saves_to_the_same_bytes_and_model_version(tmp_path: Path) -> None:
    """model_version is a digest of the checkpoint files, so saving must be deterministic: safetensors
    wrote a two-key metadata map in hash order, and identical weights got one of two versions."""
    from services.reward_node.checkpoint import save_checkpoint
    from services.reward_node.rm.light import LightRM

    torch.manual_seed(0)
    model = LightRM()
    saved = [save_checkpoint(model, tmp_path / str(i), {"node_id": "bank"}) for i in range(12)]
    assert len({m["model_version"] for m in saved}) == 1
    assert len({(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(12)}) == 1
