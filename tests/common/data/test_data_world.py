"""make_world / load_world: determinism, checksums, layout, partition, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.common.data.config import WorldConfig
from services.common.data.world import FORMAT_VERSION, World, WorldFormatError, load_world
from services.common.data.world_writer import make_world


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_tree(tmp_path: Path, world_dir: Path, small_cfg: WorldConfig) -> None:
    again = tmp_path / "again"
    make_world(small_cfg, again, progress=False)
    assert tree_hashes(again) == tree_hashes(world_dir)


def test_config_read_back_from_manifest_gives_same_tree(
    tmp_path: Path, world: World, world_dir: Path
) -> None:
    again = tmp_path / "again"
    make_world(world.config, again, progress=False)
    assert tree_hashes(again) == tree_hashes(world_dir)


def test_different_seed_gives_different_content(
    tmp_path: Path, world_dir: Path, small_cfg: WorldConfig
) -> None:
    other = tmp_path / "other"
    make_world(small_cfg.model_copy(update={"seed": 8}), other, progress=False)
    a, b = tree_hashes(world_dir), tree_hashes(other)
    assert set(a) == set(b)  # same layout and ids
    for rel in (
        "benchmarks/shapes/train.jsonl",
        "clients/clinic/prefs_train.jsonl",
        "server/prompt_pool.jsonl",
    ):
        assert a[rel] != b[rel], rel
    differing_images = sum(a[k] != b[k] for k in a if k.startswith("images/"))
    assert differing_images > 0.9 * sum(k.startswith("images/") for k in a)


def test_manifest_checksums_match_every_file(world_dir: Path) -> None:
    manifest = json.loads((world_dir / "manifest.json").read_text())
    on_disk = tree_hashes(world_dir)
    del on_disk["manifest.json"]
    assert manifest["files"] == on_disk
    assert manifest["format"] == "mor-world" and manifest["format_version"] == FORMAT_VERSION


def test_manifest_is_sorted_json(world_dir: Path) -> None:
    text = (world_dir / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, separators=(",", ": ")) + "\n"


def test_layout_and_counts(world: World, small_cfg: WorldConfig) -> None:
    for b, counts in small_cfg.benchmarks.items():
        train, test = world.examples(b, "train"), world.examples(b, "test")
        assert len(train) == counts.train and len(test) == counts.test
        assert all(world.image_path(ex.image).is_file() for ex in train + test)
        assert all(len(ex.answers) == small_cfg.n_reference_answers for ex in train)
    for spec in small_cfg.all_clients():
        assert len(world.pairs(spec.name, "train")) == spec.n_pairs_train
        assert len(world.pairs(spec.name, "test")) == spec.n_pairs_test
    assert len(world.prompt_pool()) == small_cfg.prompt_pool_size
    assert len(world.router_pairs()) == small_cfg.router_pairs_size


def test_images_are_rgb_of_configured_size(world: World, small_cfg: WorldConfig) -> None:
    ex = world.examples("charts", "test")[0]
    img = world.load_image(ex.image)
    assert img.mode == "RGB" and img.size == (small_cfg.image_size, small_cfg.image_size)


def test_client_folder_holds_no_truth(world_dir: Path, world: World) -> None:
    for name in world.clients:
        folder = world_dir / "clients" / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "client.json",
            "labelled.jsonl",
            "prefs_test.jsonl",
            "prefs_train.jsonl",
        ]
        view = json.loads((folder / "client.json").read_text())
        assert "label_noise" not in view
    assert (world_dir / "truth" / "market_flips.json").is_file()


def test_held_out_and_noisy_clients_marked(world: World, world_dir: Path) -> None:
    assert world.is_held_out("lab") and not world.is_held_out("clinic")
    assert "lab" not in world.training_clients()
    assert json.loads((world_dir / "clients/lab/client.json").read_text())["held_out"] is True
    counts = world.manifest["counts"]["clients"]
    assert counts["market"]["noisy"] and not counts["clinic"]["noisy"]


def test_train_examples_are_partitioned_disjointly(world: World) -> None:
    groups = {c: {p.example_id for p in world.pairs(c, "train")} for c in world.clients}
    groups.update({f"labelled:{c}": {ex.id for ex in world.labelled(c)} for c in world.clients})
    groups["pool"] = {p.example_id for p in world.prompt_pool()}
    groups["router_pairs"] = {p.example_id for p in world.router_pairs()}
    names = list(groups)
    for i, a in enumerate(names):
        assert (
            len(groups[a]) == len(world.pairs(a, "train")) if a in world.clients else True
        )  # one pair per example
        for b in names[i + 1 :]:
            assert not groups[a] & groups[b], (a, b)
    sft = {ex.id for ex in world.sft_examples()}
    assert not sft & set().union(*groups.values())
    assert len(sft) == sum(world.manifest["counts"]["sft_train"].values())


def test_labelled_examples_follow_the_mix_and_pairs_carry_their_kind(world: World) -> None:
    for name, spec in world.clients.items():
        got: dict[str, int] = {}
        for ex in world.labelled(name):
            got[ex.benchmark] = got.get(ex.benchmark, 0) + 1
            assert ex.split == "train" and ex.answers
        assert got == {b: n for b, n in spec.labelled_per_benchmark().items() if n}
        assert {p.kind for s in ("train", "test") for p in world.pairs(name, s)} <= {"correctness", "style", "format"}
    expert = world.clients["clinic"]
    kinds = [p.kind for p in world.pairs("clinic", "train")]
    assert expert.kind_mix is not None and kinds.count("correctness") > kinds.count("style") > 0


def test_kind_mix_decides_the_pair_kinds(tmp_path: Path) -> None:
    cfg = WorldConfig.small(
        clients=[{"name": "acme", "domain_mix": {"digits": 1.0}, "style": "word", "rm_arch": "light",
                  "n_pairs_train": 40, "n_pairs_test": 10, "kind_mix": {"correctness": 1.0}}],
        noisy_client=False, held_out_client=None,
    )
    make_world(cfg, tmp_path / "w", progress=False)
    pairs = load_world(tmp_path / "w").pairs("acme")
    assert {p.kind for p in pairs} == {"correctness"}


def test_client_domain_mix_is_respected(world: World) -> None:
    spec = world.clients["clinic"]
    got = {b: 0 for b in spec.domain_mix}
    for p in world.pairs("clinic", "train"):
        got[p.benchmark] += 1
    assert got == spec.pairs_per_benchmark("train")


def test_pool_references_match_examples(world: World) -> None:
    for p in world.prompt_pool():
        ex = world.example(p.example_id)
        assert (p.image, p.question, p.answers) == (ex.image, ex.question, ex.answers)
        assert ex.split == "train"


def test_pairs_point_at_their_example(world: World) -> None:
    for p in world.pairs("bank", "test"):
        ex = world.example(p.example_id)
        assert (p.image, p.question, p.benchmark) == (ex.image, ex.question, ex.benchmark)
        assert ex.split == "test"


def test_verify_detects_tampering(tmp_path: Path, small_cfg: WorldConfig) -> None:
    out = tmp_path / "w"
    make_world(small_cfg.model_copy(update={"seed": 3}), out, progress=False)
    assert load_world(out, verify=True).verify() == []
    target = next((out / "images" / "digits").iterdir())
    target.write_bytes(b"not a png")
    (out / "stray.txt").write_text("x")
    with pytest.raises(WorldFormatError, match="checksum mismatch"):
        load_world(out, verify=True)
    problems = load_world(out).verify()
    assert any("stray.txt: not in the manifest" in p for p in problems)


def test_load_world_rejects_a_non_world(tmp_path: Path) -> None:
    with pytest.raises(WorldFormatError, match="manifest.json is missing"):
        load_world(tmp_path)
    with pytest.raises(WorldFormatError, match="no such folder"):
        load_world(tmp_path / "nope")


def test_load_world_rejects_another_format_version(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mor-world", "format_version": 999}))
    with pytest.raises(WorldFormatError, match="version 999"):
        load_world(tmp_path)


def test_load_world_rejects_a_foreign_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WorldFormatError, match="not a MoR world manifest"):
        load_world(tmp_path)


def test_make_world_refuses_non_empty_folder_unless_overwrite(tmp_path: Path, small_cfg: WorldConfig) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_world(small_cfg, out, progress=False)
    with pytest.raises(FileExistsError, match="not a MoR world"):
        make_world(small_cfg, out, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_make_world_overwrites_an_old_world(tmp_path: Path) -> None:
    out = tmp_path / "w"
    tiny = WorldConfig.small(
        seed=1, benchmarks={b: {"train": 100, "test": 30} for b in ("shapes", "digits", "charts")}
    )
    make_world(tiny, out, progress=False)
    make_world(tiny.model_copy(update={"seed": 2}), out, progress=False, overwrite=True)
    assert load_world(out, verify=True).config.seed == 2
    assert not any(p.name.startswith(".w.") for p in tmp_path.iterdir())
