"""services/common/data/sources.py + tables.py: every outside format in, the same records out; errors
name the file, the record and the field, and list every missing image at load."""
from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from services.common.data.sources import MAX_LISTED, DatasetError, describe, read_prefs, read_vqa

COLOURS = ("red", "green", "blue")


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    out = []
    for c in COLOURS:
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / f"{c}.png").write_bytes(png(c))
        out.append(f"img/{c}.png")
    return out


def vqa_rows(images: list[str]) -> list[dict]:
    return [{"image": im, "question": "What colour is it?", "answers": [c, c, c.upper()]}
            for im, c in zip(images, COLOURS, strict=True)]


def test_plain_jsonl_vqa_resolves_images_against_the_file_and_infers_fields(tmp_path, images):
    path = write_jsonl(tmp_path / "vqa.jsonl", vqa_rows(images))

    vqa = read_vqa(path)

    assert (vqa.format, vqa.split, vqa.splits) == ("jsonl", "vqa", ("vqa",))
    assert [p.id for p in vqa.prompts] == ["vqa-000000", "vqa-000001", "vqa-000002"]
    assert vqa.prompts[0].image == str(tmp_path / "img" / "red.png")
    assert vqa.images.load_image(vqa.prompts[1].image).getpixel((0, 0)) == (0, 128, 0)
    ex = vqa.examples()
    assert ex[2].answers == ["blue", "blue", "BLUE"] and ex[2].answer_type == "word" and ex[2].benchmark == "vqa"


def test_save_to_disk_with_embedded_images_and_hub_answer_dicts_selects_a_split(tmp_path):
    rows = {"image": [Image.open(io.BytesIO(png(c))) for c in COLOURS], "question": ["Colour?"] * 3,
            "answers": [[{"answer": c, "answer_confidence": "yes"}] for c in COLOURS]}
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(tmp_path / "hf")

    train, val = read_vqa(tmp_path / "hf", "train"), read_vqa(tmp_path / "hf", "validation")

    assert (train.format, train.splits) == ("save_to_disk", ("train", "validation"))
    assert len(train.prompts) == 3 and len(val.prompts) == 1
    assert train.prompts[1].answers == ["green"] and train.prompts[1].image.startswith("embedded:")
    assert train.images.image_bytes(train.prompts[1].image) == png("green")
    with pytest.raises(DatasetError, match="splits: train, validation"):
        read_vqa(tmp_path / "hf", "test")
    with pytest.raises(DatasetError, match="choose one with --split"):
        read_vqa(tmp_path / "hf", None, default=("test",))


def test_parquet_prompts_without_answers_are_a_prompt_set_not_an_eval_set(tmp_path, images):
    rows = [{"image": str(tmp_path / im), "question": f"Describe {i}."} for i, im in enumerate(images)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "prompts.parquet"))

    vqa = read_vqa(tmp_path / "prompts.parquet")

    assert vqa.format == "parquet" and vqa.answered == 0 and [p.answers for p in vqa.prompts] == [[], [], []]
    with pytest.raises(DatasetError, match=r"3 of 3 records have no reference answers \(field 'answers'\).*row 0"):
        vqa.examples("`mor eval`")
    assert describe(tmp_path / "prompts.parquet")["kind"] == "prompts"


def test_a_folder_of_split_files_in_the_hub_layout(tmp_path, images):
    rows = vqa_rows(["../../" + im for im in images])
    write_jsonl(tmp_path / "ds" / "data" / "train-00000-of-00001.jsonl", rows)
    write_jsonl(tmp_path / "ds" / "data" / "test-00000-of-00001.jsonl", rows[:1])

    assert len(read_vqa(tmp_path / "ds").prompts) == 1  # default: the test split
    assert len(read_vqa(tmp_path / "ds", "train").prompts) == 3


def test_vqav2_json_keeps_its_split_name_and_checks_images(tmp_path):
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000007.jpg").write_bytes(png("red"))
    q = {"data_subtype": "val2014", "questions": [{"image_id": 7, "question": "Colour?", "question_id": 70},
                                                  {"image_id": 8, "question": "Shape?", "question_id": 80}]}
    a = {"annotations": [{"question_id": 70, "answers": [{"answer": "red"}], "answer_type": "other"},
                         {"question_id": 80, "answers": [{"answer": "round"}], "answer_type": "other"}]}
    (tmp_path / "questions.json").write_text(json.dumps(q))
    (tmp_path / "annotations.json").write_text(json.dumps(a))

    with pytest.raises(DatasetError, match=r"1 of 2 questions name an image.*questions\[1\].*COCO_val2014_000000000008"):
        read_vqa(tmp_path / "questions.json")
    q["questions"].pop()
    (tmp_path / "questions.json").write_text(json.dumps(q))
    vqa = read_vqa(tmp_path / "questions.json", "val2014")
    assert vqa.split == "val2014" and vqa.examples()[0].answers == ["red"]


def test_every_bad_record_and_missing_image_is_reported_at_once_with_file_line_and_field(tmp_path, images):
    rows = vqa_rows(images)
    rows += [{"image": f"img/gone{i}.png", "question": "q", "answers": ["x"]} for i in range(MAX_LISTED + 2)]
    rows += [{"image": images[0], "answers": ["x"]}, {"image": images[0], "question": "q", "answers": 3}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)

    with pytest.raises(DatasetError) as err:
        read_vqa(path)

    msg = str(err.value)
    assert msg.startswith(f"{path}: 2 of {len(rows)} records are invalid")
    assert f"{path}:{len(rows) - 1}: field 'question': missing" in msg
    assert f"{path}:{len(rows)}: field 'answers': expected a string or a list of strings" in msg
    assert f"{MAX_LISTED + 2} of {len(rows)} records name an image file that does not exist" in msg
    assert f"{path}:4: field 'image': {tmp_path / 'img' / 'gone0.png'}" in msg
    assert "... 2 more" in msg


def trl_features() -> datasets.Features:
    text = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    turn = [{"role": datasets.Value("string"), "content": [text]}]
    return datasets.Features({"images": datasets.List(datasets.Image()), "prompt": turn, "chosen": turn, "rejected": turn})


def trl_rows() -> dict[str, list]:
    def turn(role: str, text: str, image: bool = False) -> list[dict]:
        parts = ([{"type": "image", "text": None}] if image else []) + [{"type": "text", "text": text}]
        return [{"role": role, "content": parts}]

    return {"images": [[Image.open(io.BytesIO(png(c)))] for c in COLOURS],
            "prompt": [turn("user", "What colour is it?", image=True) for _ in COLOURS],
            "chosen": [turn("assistant", c) for c in COLOURS],
            "rejected": [turn("assistant", "purple") for _ in COLOURS]}


def test_trl_conversational_preferences_from_save_to_disk(tmp_path):
    datasets.Dataset.from_dict(trl_rows(), features=trl_features()).save_to_disk(tmp_path / "trl")

    prefs = read_prefs(tmp_path / "trl", client="acme")

    assert prefs.format == "save_to_disk" and len(prefs.pairs) == 3
    p = prefs.pairs[0]
    assert (p.question, p.chosen, p.rejected, p.client, p.kind) == ("What colour is it?", "red", "purple", "acme", "")
    assert prefs.images.load_image(p.image).getpixel((0, 0)) == (255, 0, 0)
    assert describe(tmp_path / "trl")["kind"] == "preference"


def test_trl_standard_and_plain_jsonl_preferences_agree(tmp_path, images):
    plain = write_jsonl(tmp_path / "plain.jsonl", [
        {"image": im, "question": "What colour is it?", "chosen": c, "rejected": "purple"}
        for im, c in zip(images, COLOURS, strict=True)])
    trl = write_jsonl(tmp_path / "trl.jsonl", [
        {"images": [im], "prompt": "What colour is it?", "chosen": c, "rejected": "purple"}
        for im, c in zip(images, COLOURS, strict=True)])

    a, b = read_prefs(plain), read_prefs(trl)

    assert [(p.image, p.question, p.chosen, p.rejected) for p in a.pairs] == \
        [(p.image, p.question, p.chosen, p.rejected) for p in b.pairs]


def test_preference_errors_name_the_row_and_field(tmp_path, images):
    rows = [{"images": [images[0], images[1]], "prompt": "q", "chosen": "a", "rejected": "b"},
            {"image": images[0], "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
             "chosen": "a", "rejected": "b"},
            {"image": images[0], "question": "q", "chosen": "a"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)

    with pytest.raises(DatasetError) as err:
        read_prefs(path)

    msg = str(err.value)
    assert f"{path}:1: field 'images': holds 2 images" in msg
    assert f"{path}:2: field 'prompt': holds a 'assistant' turn" in msg
    assert f"{path}:3: field 'rejected': missing" in msg


def test_no_such_path_and_unknown_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")

    with pytest.raises(DatasetError, match="no such file or folder"):
        read_vqa(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="unknown file type '.csv'"):
        read_vqa(tmp_path / "x.csv")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        read_vqa(tmp_path)
