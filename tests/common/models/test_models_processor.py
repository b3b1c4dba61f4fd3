"""VLMProcessor and the pure ops: image-token expansion, padding layout, loss masks, log-probs."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from services.common.models import ops


def test_image_placeholder_expands_to_the_models_token_count(tiny_vlm):
    proc = tiny_vlm.processor
    enc = proc.encode("What colour?", Image.new("RGB", (64, 64)))
    n = enc.prompt_ids.count(proc.image_token_id)
    assert n == 16  # qwen: 8x8 patches merged 2x2; llava tiny: 16x16 patches of a 64x64 image
    if enc.image_grid_thw is not None:
        assert enc.pixel_values.shape[0] == int(enc.image_grid_thw.prod())


def test_non_square_image_token_count_matches_features(tiny_vlm):
    proc = tiny_vlm.processor
    enc = proc.encode("q", Image.new("RGB", (80, 48)))
    batch = proc.collate([enc])
    with torch.no_grad():  # the model checks features == placeholders, so a mismatch raises here
        tiny_vlm.model(**batch.full_inputs())
    assert enc.prompt_ids.count(proc.image_token_id) > 0


def test_generation_batch_is_left_padded(tiny_vlm, questions, images):
    batch = tiny_vlm.processor.generation_batch(questions, images)
    assert batch.completion_ids.shape[1] == 0
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert (batch.attention_mask[:, -1] == 1).all()  # every prompt ends in the last column
    lengths = batch.attention_mask.sum(-1)
    assert lengths.min() < batch.prompt_len  # someone is padded ...
    first_real = batch.attention_mask.argmax(-1)
    assert torch.equal(first_real, batch.prompt_len - lengths)  # ... on the left
    header = tiny_vlm.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert batch.input_ids[:, -len(header):].tolist() == [header] * len(questions)


def test_sft_batch_puts_answer_and_eos_after_the_prompt(tiny_vlm, questions, images):
    proc = tiny_vlm.processor
    answers = ["red", "three", "B", "a longer answer here"]
    batch = proc.sft_batch(questions, images, answers)
    for row, ans in enumerate(answers):
        ids = proc.tokenizer(ans, add_special_tokens=False)["input_ids"] + [proc.eos_id]
        n = int(batch.completion_mask[row].sum())
        assert n == len(ids)
        assert batch.completion_ids[row, :n].tolist() == ids
        assert batch.input_ids[row, batch.prompt_len : batch.prompt_len + n].tolist() == ids
        assert batch.attention_mask[row, batch.prompt_len + n :].sum() == 0  # right padding after the answer


def test_mm_token_type_ids_mark_image_tokens(tiny_vlm, questions, images):
    batch = tiny_vlm.processor.generation_batch(questions, images)
    if tiny_vlm.model.config.model_type == "llava":
        assert batch.mm_token_type_ids is None
        return
    expected = (batch.input_ids == tiny_vlm.processor.image_token_id).long()
    assert torch.equal(batch.mm_token_type_ids, expected)


def test_lengths_must_agree(tiny_vlm, questions, images):
    with pytest.raises(ValueError, match="same length"):
        tiny_vlm.processor.generation_batch(questions, images[:2])


def test_left_and_right_pad():
    ids, mask = ops.left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = ops.right_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert ops.positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 0]]


def test_token_logprobs_closed_form():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 100.0]]])  # token 3 would dominate but is suppressed
    mask = ops.suppress_mask(4, [3])
    lp = ops.token_logprobs(logits, torch.tensor([[1]]), mask)
    torch.testing.assert_close(lp, torch.tensor([[-math.log(3.0)]]))
    logits = torch.tensor([[[2.0, 0.0]]])
    lp = ops.token_logprobs(logits, torch.tensor([[0]]), None, temperature=2.0)
    torch.testing.assert_close(lp, torch.tensor([[1.0 - math.log(math.exp(1.0) + 1.0)]]))


def test_masked_mean_ignores_padding():
    vals = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert ops.masked_mean(vals, mask).item() == 2.0
    assert ops.masked_mean(vals, torch.zeros_like(mask)).item() == 0.0
