"""load_vqa on our JSONL, plain JSONL and VQAv2 files, plus malformed-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.data.loaders import LoaderError, load_vqa
from services.common.data.world import World


def test_our_jsonl_round_trips_with_absolute_images(world: World, world_dir: Path) -> None:
    path = world_dir / "benchmarks" / "shapes" / "test.jsonl"
    loaded = load_vqa(path)
    stored = world.examples("shapes", "test")
    assert [e.id for e in loaded] == [e.id for e in stored]
    assert loaded[0].answers == stored[0].answers and loaded[0].meta == stored[0].meta
    assert all(Path(e.image).is_absolute() and Path(e.image).is_file() for e in loaded)


def test_plain_jsonl(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    lines = [
        {"image": "imgs/a.png", "question": "How many cats?", "answers": ["2", "two", "2"]},
        {"image": "imgs/b.png", "question": "Is it red?", "answers": "yes", "id": "q2"},
        {"image": "imgs/c.png", "question": "What animal?", "answers": ["dog"], "answer_type": "word"},
    ]
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    exs = load_vqa(f, benchmark="mine", split="val")
    assert [e.answer_type for e in exs] == ["number", "yesno", "word"]
    assert exs[0].id == "mine-000001" and exs[1].id == "q2"
    assert exs[1].answers == ["yes"]
    assert exs[0].image == str((tmp_path / "imgs" / "a.png").resolve())
    assert {e.benchmark for e in exs} == {"mine"} and {e.split for e in exs} == {"val"}


def _vqav2(tmp_path: Path, annotations: list[dict] | None = None) -> Path:
    q = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
            {"image_id": 7, "question": "Is there a dog?", "question_id": 70},
        ],
    }
    a = {
        "annotations": annotations
        if annotations is not None
        else [
            {
                "question_id": 420,
                "answer_type": "other",
                "answers": [{"answer": "red"}] * 9 + [{"answer": "orange"}],
            },
            {"question_id": 70, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
        ]
    }
    qp = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    qp.write_text(json.dumps(q))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(a))
    return qp


def test_vqav2_pair_with_default_pattern(tmp_path: Path) -> None:
    exs = load_vqa(_vqav2(tmp_path))
    assert [e.id for e in exs] == ["vqa-420", "vqa-70"]
    assert exs[0].image == str(tmp_path.resolve() / "val2014" / "COCO_val2014_000000000042.jpg")
    assert exs[0].answer_type == "word" and exs[1].answer_type == "yesno"
    assert len(exs[0].answers) == 10 and exs[0].split == "val2014" and exs[0].benchmark == "vqav2"


def test_vqav2_custom_pattern(tmp_path: Path) -> None:
    qp = _vqav2(tmp_path)
    exs = load_vqa(
        qp, image_pattern="pics/%d.jpg", annotations=tmp_path / "v2_mscoco_val2014_annotations.json"
    )
    assert exs[1].image.endswith("pics/7.jpg")


def test_vqav2_missing_annotation_is_named(tmp_path: Path) -> None:
    qp = _vqav2(tmp_path, annotations=[{"question_id": 420, "answers": [{"answer": "red"}]}])
    with pytest.raises(LoaderError, match=r"question_id 70\) has no annotation"):
        load_vqa(qp)


def test_vqav2_malformed_annotation(tmp_path: Path) -> None:
    qp = _vqav2(tmp_path, annotations=[{"question_id": 420}])
    with pytest.raises(LoaderError, match=r"annotations\[0\] is malformed"):
        load_vqa(qp)


def test_vqav2_without_annotations_file(tmp_path: Path) -> None:
    qp = _vqav2(tmp_path)
    (tmp_path / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(LoaderError, match="annotations"):
        load_vqa(qp)


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"image": "a.png", "question": "q?", "answers": ["1"]}\n{not json}\n')
    with pytest.raises(LoaderError, match=r"bad\.jsonl:2: invalid JSON"):
        load_vqa(f)


def test_missing_key_names_file_line_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(
        '{"image": "a.png", "question": "q?", "answers": ["1"]}\n\n{"image": "b.png", "answers": ["1"]}\n'
    )
    with pytest.raises(LoaderError, match=r"bad\.jsonl:3: .*missing keys \['question'\]"):
        load_vqa(f)


def test_empty_answers_rejected(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"image": "a.png", "question": "q?", "answers": []}\n')
    with pytest.raises(LoaderError, match=r"bad\.jsonl:1: answers"):
        load_vqa(f)


def test_our_format_bad_answer_type(tmp_path: Path, world: World) -> None:
    rec = world.examples("digits", "test")[0].to_dict()
    rec["answer_type"] = "colour"
    f = tmp_path / "ours.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(LoaderError, match=r"ours\.jsonl:1: .*answer_type"):
        load_vqa(f)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no such file"):
        load_vqa(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(LoaderError, match="empty file"):
        load_vqa(tmp_path / "empty.jsonl")


def test_json_that_is_not_vqav2(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text('{"something": []}')
    with pytest.raises(LoaderError, match="not a VQAv2 questions file"):
        load_vqa(f)
