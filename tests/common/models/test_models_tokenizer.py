"""Offline byte-level BPE tokenizer: deterministic, fixed special ids, chat template, lossless."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from services.common.models import tokenizer as tk

_HASH_SNIPPET = (
    "import hashlib; from services.common.models.tokenizer import build_tokenizer; "
    "print(hashlib.sha256(build_tokenizer('qwen2_vl', 1024).backend_tokenizer.to_str().encode()).hexdigest())"
)


def _digest(tok) -> str:
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


def test_training_is_deterministic_in_process():
    corpus = tk.fallback_corpus()
    assert tk.train_bpe(corpus, 700).to_str() == tk.train_bpe(corpus, 700).to_str()


def test_default_tokenizer_is_identical_in_a_fresh_process():
    here = _digest(tk.build_tokenizer("qwen2_vl", 1024))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _HASH_SNIPPET], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == here


def test_special_tokens_have_fixed_ids():
    tok = tk.build_tokenizer("qwen2_vl")
    assert tok.convert_tokens_to_ids(list(tk.SPECIAL_TOKENS)) == list(range(len(tk.SPECIAL_TOKENS)))
    assert tok.eos_token == tk.IM_END and tok.pad_token == tk.PAD
    assert tok.padding_side == "left"


def test_vocab_is_small():
    tok = tk.build_tokenizer("qwen2_vl", 1024)
    assert 256 + len(tk.SPECIAL_TOKENS) < len(tok) <= 1024


@pytest.mark.parametrize(
    ("arch", "image_part"),
    [("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>"), ("llava", "<image>\n")],
)
def test_chat_template_renders_chatml_with_image_placeholder(arch, image_part):
    tok = tk.build_tokenizer(arch)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": "red"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{image_part}What colour?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_special_tokens_are_single_ids_in_text():
    tok = tk.build_tokenizer("qwen2_vl")
    ids = tok("<|im_start|>user\n<|image_pad|>hi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and 5 in ids and ids[-1] == 2


@pytest.mark.parametrize("text", ["red", "How many circles are there?", "Zebra 42 naïve ✓ 猫", "  two  spaces\n"])
def test_encode_decode_round_trip(text):
    tok = tk.build_tokenizer("qwen2_vl")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_world_words_are_single_tokens():
    tok = tk.build_tokenizer("qwen2_vl")
    for word in ["red", "blue", "circle", "three", "seven"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
