"""Outside data through every command, as a user with standard-format datasets runs them: datasets
written here with Hugging Face `datasets` (save_to_disk, parquet, embedded images) and as plain JSONL
files (image paths), tiny PIL images, a tiny random-init policy. No downloads, no generated world."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from services.cli import app
from services.cli.common import EXIT_DATA
from services.common.config import RewardNodeSettings
from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm

torch.set_num_threads(1)
COLOURS = ("red", "green", "blue", "yellow")
QUESTION = "What colour is the picture?"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def image(i: int) -> Image.Image:
    im = Image.new("RGB", (16, 16), COLOURS[i % len(COLOURS)])
    im.putpixel((i % 16, 0), (i * 7 % 256, 0, 0))  # distinct bytes per example
    return im


def embedded(i: int) -> Image.Image:
    buf = io.BytesIO()
    image(i).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def trl_turn(role: str, text: str, with_image: bool = False) -> list[dict]:
    parts = ([{"type": "image", "text": None}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": role, "content": parts}]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format a user may bring, plus a tiny policy checkpoint."""
    root = tmp_path_factory.mktemp("own-data")
    (root / "img").mkdir()
    for i in range(24):
        image(i).save(root / "img" / f"{i}.png")
    colour = [COLOURS[i % len(COLOURS)] for i in range(24)]
    # plain JSONL VQA, a folder of split files, image paths relative to each file
    jsonl(root / "vqa" / "train.jsonl", [{"image": f"../img/{i}.png", "question": QUESTION, "answers": [colour[i]] * 3}
                                         for i in range(16)])
    jsonl(root / "vqa" / "test.jsonl", [{"image": f"../img/{i}.png", "question": QUESTION, "answers": [colour[i]] * 3}
                                        for i in range(16, 24)])
    # save_to_disk VQA with embedded images, train / validation
    vqa = datasets.Dataset.from_dict({"image": [embedded(i) for i in range(24)], "question": [QUESTION] * 24,
                                      "answer": colour}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": vqa.select(range(16)), "validation": vqa.select(range(16, 24))}).save_to_disk(
        root / "vqa_hf")
    # a server prompt set without answers: parquet with embedded images
    datasets.Dataset.from_dict({"image": [embedded(i) for i in range(8)], "question": [QUESTION] * 8}).cast_column(
        "image", datasets.Image()).to_parquet(str(root / "prompts.parquet"))
    # TRL conversational preferences, save_to_disk, train / test
    text = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    turn = [{"role": datasets.Value("string"), "content": [text]}]
    features = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": turn, "chosen": turn,
                                  "rejected": turn})
    trl = datasets.Dataset.from_dict({
        "images": [[embedded(i)] for i in range(24)],
        "prompt": [trl_turn("user", QUESTION, with_image=True) for _ in range(24)],
        "chosen": [trl_turn("assistant", c) for c in colour],
        "rejected": [trl_turn("assistant", COLOURS[(i + 1) % len(COLOURS)]) for i in range(24)],
    }, features=features)
    datasets.DatasetDict({"train": trl.select(range(18)), "test": trl.select(range(18, 24))}).save_to_disk(
        root / "prefs_trl")
    # plain JSONL preferences (one file: a seeded share is held out)
    jsonl(root / "prefs.jsonl", [{"image": f"img/{i}.png", "question": QUESTION, "chosen": colour[i],
                                  "rejected": COLOURS[(i + 1) % len(COLOURS)]} for i in range(24)])
    build_vlm(ModelConfig(preset="tiny", seed=0)).save(root / "policy")
    return {"root": root, "policy": root / "policy"}


def node_yaml(own: dict[str, Path], name: str, data: str) -> Path:
    path = own["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "node_id": name, "data_dir": str(own["root"] / data),
        "model": {"kind": "light", "checkpoint": str(own["root"] / f"rm-{name}"), "torch_threads": 1},
        "train": {"epochs": 2, "batch_size": 8, "grounding_epochs": 0}, "tls": {"insecure": True}}))
    return path


@pytest.mark.parametrize(("rel", "args", "kind", "records", "split"), [
    ("vqa", [], "vqa", 8, "test"),
    ("vqa/train.jsonl", [], "vqa", 16, "train"),
    ("vqa_hf", ["--split", "validation"], "vqa", 8, "validation"),
    ("prompts.parquet", [], "prompts", 8, "prompts"),
    ("prefs_trl", ["--split", "train"], "preference", 18, "train"),
    ("prefs.jsonl", [], "preference", 24, "prefs"),
])
def test_data_info_reads_every_format(own, rel, args, kind, records, split):
    result = invoke("data", "info", str(own["root"] / rel), *args)

    assert result.exit_code == 0, result.output
    info = last_json(result)
    assert (info["kind"], info["records"], info["split"]) == (kind, records, split)


def test_eval_on_a_jsonl_folder_and_a_save_to_disk_split(own, tmp_path):
    plain = invoke("eval", "--policy", str(own["policy"]), "--data", str(own["root"] / "vqa"), "-n", "5",
                   "--out", str(tmp_path / "r.json"))
    saved = invoke("eval", "--policy", str(own["policy"]), "--data", str(own["root"] / "vqa_hf"),
                   "--split", "validation", "-n", "3")

    assert plain.exit_code == 0 and saved.exit_code == 0, plain.output + saved.output
    report, other = last_json_block(plain), last_json_block(saved)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["split"] == "test" and report["format"] == "split_files"
    assert report["benchmarks"]["vqa"]["n"] == 5 and 0.0 <= report["benchmarks"]["vqa"]["exact_match"] <= 1.0
    assert other["split"] == "validation" and other["benchmarks"]["vqa_hf"]["n"] == 3


def last_json_block(result) -> dict:
    """`mor eval` prints its report as indented JSON."""
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_sft_on_a_save_to_disk_dataset_evaluates_on_its_validation_split(own, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"policy": {"preset": "tiny"},
                                   "sft": {"steps": 4, "warmup": 1, "batch_size": 4, "vision_warmup_steps": 2}}))

    result = invoke("sft", "--data", str(own["root"] / "vqa_hf"), "--eval-split", "validation", "-c", str(cfg),
                    "--eval-examples", "3", "-o", str(tmp_path / "policy"))

    assert result.exit_code == 0, result.output
    assert last_json(result)["exact_match"].keys() == {"vqa_hf"}
    report = json.loads((tmp_path / "policy" / "sft_report.json").read_text())
    assert (report["train_split"], report["eval_split"], report["train_examples"]) == ("train", "validation", 16)
    assert (tmp_path / "policy" / "config.json").is_file()


def test_reward_node_trains_on_trl_and_plain_preference_datasets(own):
    trl = invoke("reward-node", "train", "-c", str(node_yaml(own, "acme", "prefs_trl")), "--quiet")
    plain = invoke("reward-node", "train", "-c", str(node_yaml(own, "bolt", "vqa")), "--data",
                   str(own["root"] / "prefs.jsonl"), "--quiet")

    assert trl.exit_code == 0 and plain.exit_code == 0, trl.output + plain.output
    meta = json.loads((own["root"] / "rm-acme" / "metadata.json").read_text())
    assert meta["data"]["n_train_pairs"] == 18 and meta["data"]["n_held_out_pairs"] == 6  # its test split
    meta = json.loads((own["root"] / "rm-bolt" / "metadata.json").read_text())
    assert meta["data"]["n_train_pairs"] + meta["data"]["n_held_out_pairs"] == 24 and meta["data"]["n_held_out_pairs"] == 2
    assert 0.0 <= last_json(trl)["held_out_accuracy"] <= 1.0


@contextlib.contextmanager
def node_in_thread(settings: RewardNodeSettings) -> Iterator[int]:
    """A started reward node on its own event loop in a thread (the CLI run under test owns the main one)."""
    from services.reward_node.app import build_app

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        node = build_app(settings)
        await node.start()
        return node

    node = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    try:
        yield node.port
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize("policy", ["preset", "llava_next"])
def test_a_run_on_outside_prompts_and_router_pairs_then_eval(policy, own, hub_checkpoint, tmp_path):
    policy_cfg = {"preset": "tiny", "seed": 0} if policy == "preset" else {"path": str(hub_checkpoint(policy))}
    trained = invoke("reward-node", "train", "-c", str(node_yaml(own, "cove", "prefs_trl")), "--quiet")
    assert trained.exit_code == 0, trained.output
    settings = RewardNodeSettings.loopback("cove", "light", own["root"] / "rm-cove")
    with node_in_thread(settings) as port:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({
            "world": str(tmp_path / "no-world"),  # never opened: prompts and router_pairs replace it
            "prompts": str(own["root"] / "prompts.parquet"),
            "router_pairs": {"path": str(own["root"] / "prefs_trl"), "split": "test"},
            "output_dir": str(tmp_path / "run"), "policy": policy_cfg, "torch_threads": 1,
            "nodes": [{"node_id": "cove", "address": f"127.0.0.1:{port}", "tls": {"insecure": True}, "timeout_s": 60}],
            "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            "router": {"kind": "mor", "train_steps": 5, "pairs": 6},
            "checkpoint_every": 2,
        }))
        run = invoke("orchestrator", "run", "-c", str(cfg), "--quiet")
    assert run.exit_code == 0, run.output
    summary = last_json(run)
    assert summary["steps_done"] == 2 and summary["final_policy"]
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2

    evaluated = invoke("eval", "--policy", summary["final_policy"], "--data", str(own["root"] / "vqa" / "test.jsonl"),
                       "-n", "4")
    assert evaluated.exit_code == 0, evaluated.output
    assert last_json_block(evaluated)["benchmarks"]["test"]["n"] == 4


def test_bad_outside_data_is_one_message_naming_file_record_and_field(own, tmp_path):
    rows = [{"image": f"gone/{i}.png", "question": QUESTION, "answers": ["red"]} for i in range(3)]
    jsonl(tmp_path / "bad.jsonl", rows)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"prompts": str(tmp_path / "bad.jsonl"), "output_dir": str(tmp_path / "run"),
                                   "policy": {"preset": "tiny"}}))

    runs = {
        "info": invoke("data", "info", str(tmp_path / "bad.jsonl")),
        "eval": invoke("eval", "--policy", str(own["policy"]), "--data", str(tmp_path / "bad.jsonl")),
        "eval-split": invoke("eval", "--policy", str(own["policy"]), "--data", str(own["root"] / "vqa"), "--split", "dev"),
        "sft-prompts": invoke("sft", "--data", str(own["root"] / "prompts.parquet")),
        "rm": invoke("reward-node", "train", "-c", str(node_yaml(own, "dune", "vqa/train.jsonl")), "--quiet"),
        "run": invoke("orchestrator", "run", "-c", str(cfg), "--quiet"),
    }

    for name, result in runs.items():
        assert result.exit_code == EXIT_DATA, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
    err = {name: "".join(r.stderr.split()) for name, r in runs.items()}  # rich wraps long lines anywhere
    missing = f"{tmp_path / 'bad.jsonl'}:1:field'image':{tmp_path / 'gone' / '0.png'}"
    assert "3of3recordsnameanimagefilethatdoesnotexist" in err["info"] and missing in err["info"]
    assert missing in err["eval"] and missing in err["run"] and "prompts:" in err["run"]
    assert "nosplit'dev'" in err["eval-split"]
    assert "havenoreferenceanswers(field'answers')" in err["sft-prompts"]
    assert "field'chosen':missing" in err["rm"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_a_hub_checkpoint_takes_lora_sft_on_outside_data_then_eval(family, own, hub_checkpoint, tmp_path):
    out = tmp_path / "sft"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"sft": {"steps": 3, "warmup": 1, "batch_size": 4}}))

    sft = invoke("sft", "--policy", str(hub_checkpoint(family)), "--data", str(own["root"] / "vqa_hf"), "-c", str(cfg),
                 "--eval-examples", "2", "-o", str(out))
    assert sft.exit_code == 0, sft.output
    report = json.loads((out / "sft_report.json").read_text())
    assert report["sft"]["finetune"] == "auto" and report["policy"]["path"] == str(hub_checkpoint(family))
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    assert not (out / "adapter_config.json").exists()  # the LoRA adapter was merged into the saved weights

    evaluated = invoke("eval", "--policy", str(out), "--data", str(own["root"] / "vqa_hf"), "--split", "validation", "-n", "2")
    assert evaluated.exit_code == 0, evaluated.output
    assert last_json_block(evaluated)["benchmarks"]["vqa_hf"]["n"] == 2


def test_an_unsupported_checkpoint_is_one_message_naming_the_supported_families(own, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    result = invoke("sft", "--policy", str(tmp_path / "gpt2"), "--data", str(own["root"] / "vqa_hf"), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "not a supported VLM family" in result.output and "Idefics3" in result.output
