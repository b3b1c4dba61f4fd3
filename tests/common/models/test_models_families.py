"""Every supported VLM family, from a checkpoint folder laid out like a Hub download: prompt ids equal
the family's own HF processor token for token, and the model samples, rescores, trains and is
refused or loaded with the right chat template, control tokens and dtype."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, GPT2Config, GPT2LMHeadModel

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm, load_vlm
from services.common.models.families import UnsupportedModel

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3")
QUESTION = "What colour is the shape?"


def _images() -> list[Image.Image]:
    # Square, wide and tall: any-resolution families pick a different tiling for each.
    return [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (110, 60), (30, 60, 220)),
            Image.new("RGB", (30, 100), (30, 180, 40))]


def _reference(path, vlm, image):
    """(input_ids, pixel_values) as the family's own HF processor makes them from the checkpoint's files.

    Qwen's processor class needs a video processor, which needs torchvision (not installable beside
    the CPU torch wheel): there we compose its image processor and tokenizer as Qwen2VLProcessor does
    (each <|image_pad|> becomes grid.prod() // merge_size**2 of them, then the tokenizer's defaults).
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if vlm.model.config.model_type.startswith("qwen"):
        text = vlm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out = vlm.image_processor(images=[image], return_tensors="pt")
        n = int(out["image_grid_thw"].prod()) // vlm.image_processor.merge_size**2
        ids = vlm.tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * n))["input_ids"]
        return ids, out["pixel_values"]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [[image]] if vlm.model.config.model_type == "idefics3" else [image]
    out = processor(text=[text], images=images, return_tensors="pt")
    return out["input_ids"][0].tolist(), out["pixel_values"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_equal_the_familys_own_processor(family, hub_checkpoint) -> None:
    path = hub_checkpoint(family)
    vlm = load_vlm(path)
    counts = set()
    for image in _images():
        ids, pixels = _reference(path, vlm, image)
        enc = vlm.processor.encode(QUESTION, image)
        assert enc.prompt_ids == ids
        assert torch.equal(enc.pixel_values, pixels)
        counts.add(ids.count(vlm.processor.image_token_id))
    if family in ("llava_next", "idefics3", "qwen2_vl", "qwen2_5_vl"):
        assert len(counts) > 1  # the image's shape changed its token count: the expansion was exercised
    if family in ("llava", "llava_next"):  # Llama tokenizers start with BOS, as LlavaProcessor keeps it
        assert vlm.processor.encode(QUESTION, None).prompt_ids[0] == vlm.tokenizer.bos_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_samples_rescores_and_trains_from_its_checkpoint(family, hub_checkpoint) -> None:
    vlm = load_vlm(hub_checkpoint(family))
    images = _images()
    questions = [QUESTION, "How many circles are there?", "Which bar is the tallest?"]
    groups = vlm.generate(questions, images, num_return_sequences=2, max_new_tokens=6, temperature=1.0, seed=0)
    samples = [s for g in groups for s in g]
    suppressed = set(vlm.suppress_ids)
    assert all(not suppressed & set(s.token_ids) for s in samples)

    vlm.train()
    qs = [q for q in questions for _ in range(2)]
    ims = [im for im in images for _ in range(2)]
    rescored = vlm.sequence_logprobs(qs, ims, [s.token_ids for s in samples])  # one padded batch, mixed tilings
    gap = max((r.detach() - torch.tensor(s.logprobs)).abs().max().item() for r, s in zip(rescored, samples, strict=True))
    assert gap < 1e-4  # the trainer's log-probs are the sampler's: images, padding and positions agree
    loss = -torch.stack([r.sum() for r in rescored]).mean()
    loss.backward()
    vision = [p for n, p in vlm.model.named_parameters() if ("vision" in n or "visual" in n) and p.grad is not None]
    assert vision and any(p.grad.abs().sum() > 0 for p in vision)  # the image reached the loss


def test_control_tokens_that_are_not_flagged_special_are_suppressed(hub_checkpoint) -> None:
    qwen = load_vlm(hub_checkpoint("qwen2_5_vl"))
    idefics = load_vlm(hub_checkpoint("idefics3"))
    for vlm, tokens in ((qwen, ["<tool_call>", "<|fim_prefix|>"]), (idefics, ["<row_1_col_1>", "<row_6_col_6>", "<global-img>"])):
        ids = vlm.tokenizer.convert_tokens_to_ids(tokens)
        assert not any(vlm.tokenizer.added_tokens_decoder[i].special for i in ids[:1])  # added, not special
        assert set(ids) <= set(vlm.suppress_ids)
        assert vlm.tokenizer.eos_token_id not in vlm.suppress_ids


def test_an_unsupported_family_is_refused_in_one_line(tmp_path) -> None:
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModel) as err:
        load_vlm(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "'gpt2'" in message and "Qwen2.5-VL" in message and "Idefics3" in message


def test_a_checkpoint_without_any_chat_template_names_where_it_looked(hub_checkpoint, tmp_path) -> None:
    path = shutil.copytree(hub_checkpoint("llava"), tmp_path / "llava")
    (path / "chat_template.json").unlink()
    with pytest.raises(ValueError, match="chat_template.jinja and chat_template.json"):
        load_vlm(path)


def test_dtype_follows_the_checkpoint_unless_set(hub_checkpoint, tmp_path) -> None:
    vlm = load_vlm(hub_checkpoint("qwen2_vl"), dtype="bfloat16")
    vlm.save(tmp_path / "bf16")
    shutil.copy(hub_checkpoint("qwen2_vl") / "chat_template.jinja", tmp_path / "bf16")
    assert build_vlm(ModelConfig(path=tmp_path / "bf16")).dtype == torch.bfloat16
    assert build_vlm(ModelConfig(path=tmp_path / "bf16", dtype="float32")).dtype == torch.float32
    assert build_vlm(ModelConfig()).dtype == torch.float32  # a built model
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"


def test_sft_plans_lora_for_a_checkpoint_and_full_for_a_random_init() -> None:
    from services.common.models.config import SFTConfig

    assert SFTConfig().plan(pretrained=True) == ("lora", 2e-4)
    assert SFTConfig().plan(pretrained=False) == ("full", 1e-3)
    assert SFTConfig(finetune="full").plan(pretrained=True) == ("full", 1e-5)
    assert SFTConfig(finetune="lora", lr=1e-3).plan(pretrained=False) == ("lora", 1e-3)


@pytest.mark.parametrize("family", ["idefics3", "llava_next"])
def test_lora_sft_on_a_checkpoint_trains_the_language_model_only_and_saves_a_plain_model(family, hub_checkpoint, tmp_path) -> None:
    from services.common.models.config import SFTConfig
    from services.common.models.sft import SFTExample, sft_train

    vlm = load_vlm(hub_checkpoint(family))
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    train = [SFTExample(im, QUESTION, answer) for im, answer in zip(_images(), ["red", "blue", "green"], strict=True)]
    result = sft_train(vlm, train, SFTConfig(steps=12, batch_size=3, warmup=1, lr=1e-2, num_threads=1),
                       progress=False, pretrained=True)

    assert result.losses[-1][1] < result.losses[0][1]
    after = dict(vlm.model.named_parameters())
    assert set(after) == set(before)  # the adapter was merged away: a plain model again
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all(("language_model" in n or "text_model" in n) and n.endswith("proj.weight") for n in changed)
    vlm.save(tmp_path / "sft")
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["model_type"] == family
    assert not (tmp_path / "sft" / "adapter_config.json").exists()
