"""services/reward_node/data.py on outside preference datasets: a world client's pairs exported to
TRL's format (save_to_disk, embedded images) train the very RM the world folder trains."""
from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from services.common.config import RewardNodeSettings
from services.common.data.world import load_world
from services.reward_node.data import DataError, load_node_data
from services.reward_node.train import train_rm


def export_trl(world_dir: Path, client: str, out: Path) -> Path:
    world = load_world(world_dir)

    def split(name: str) -> datasets.Dataset:
        pairs = world.pairs(client, name)
        return datasets.Dataset.from_dict({
            "images": [[str(world.image_path(p.image))] for p in pairs], "prompt": [p.question for p in pairs],
            "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs],
            "benchmark": [p.benchmark for p in pairs], "kind": [p.kind for p in pairs],
        }).cast_column("images", datasets.List(datasets.Image()))

    # save_to_disk embeds the image files' bytes: the folder is self-contained, as a dataset handed around is
    datasets.DatasetDict({"train": split("train"), "test": split("test")}).save_to_disk(out)
    return out


def test_trl_export_of_a_client_trains_the_same_rm_as_the_world(world_dir: Path, tmp_path: Path) -> None:
    trl = export_trl(world_dir, "school", tmp_path / "school_trl")
    settings = {"train": {"epochs": 2, "batch_size": 32, "grounding_epochs": 0, "max_train_pairs": 64}}

    native = train_rm(RewardNodeSettings.loopback("school", "light", tmp_path / "a", data_dir=world_dir, **settings))
    outside = train_rm(RewardNodeSettings.loopback("school", "light", tmp_path / "b", data_dir=trl, **settings))

    data = load_node_data(trl, "school")
    assert data.images is not None and data.pairs["train"][0].image.startswith("embedded:")
    assert outside.metadata["held_out_accuracy"] == pytest.approx(native.metadata["held_out_accuracy"])
    assert outside.metadata["held_out_by"] == native.metadata["held_out_by"]
    assert outside.metadata["model_version"] == native.metadata["model_version"]


def test_a_single_file_holds_out_a_seeded_share_and_bad_data_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")  # exists; content is only read when training
    rows = [f'{{"image": "a.png", "question": "q{i}", "chosen": "x", "rejected": "y"}}' for i in range(20)]
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"image": "b.png", "question": "q", "chosen": "x"}\n')

    a, b = load_node_data(tmp_path / "p.jsonl", "acme", 0.25, seed=3), load_node_data(tmp_path / "p.jsonl", "acme", 0.25, seed=3)

    assert (len(a.pairs["train"]), len(a.pairs["test"])) == (15, 5)
    assert [p.id for p in a.pairs["test"]] == [p.id for p in b.pairs["test"]]
    assert {p.client for p in a.pairs["train"]} == {"acme"}
    with pytest.raises(DataError, match=r"data_dir: .*bad.jsonl:1: field 'rejected': missing.*b\.png"):
        load_node_data(tmp_path / "bad.jsonl", "acme")
