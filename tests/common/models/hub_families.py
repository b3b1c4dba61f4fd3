"""Tiny checkpoints laid out like Hub downloads, one per supported VLM family (tests only).

Random init, the family's real tokenizer class (on a small BPE trained here, with the family's
control tokens), its chat template where Hub checkpoints of that family keep it (Qwen:
``chat_template.jinja``; llava-hf and Idefics3: the older ``chat_template.json``), its PIL image
processor, and a ``processor_config.json`` as the Hub ships it; everything written with
``save_pretrained``. Loaded by the ``hub_checkpoint`` fixture of tests/conftest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    GPT2Tokenizer,
    Idefics3Config,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaNextConfig,
    Qwen2_5_VLConfig,
    Qwen2Tokenizer,
    Qwen2VLConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from services.common.models.tokenizer import default_corpus, train_bpe

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3")

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_CONTROL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
QWEN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
  "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = ("{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
  "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% elif c['type'] == 'text' %}{{ c['text'] + ' '}}{% endif %}{% endfor %}{% endfor %}"
  "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
IDEFICS_TEMPLATE = ("<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
  "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
  "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def _bpe(size: int, special: list[str]):
    return train_bpe(default_corpus()[:400], size, special)


def _qwen(cls, qwen2_5: bool = False):
    t = Qwen2Tokenizer(tokenizer_object=_bpe(600, QWEN_SPECIAL), eos_token="<|im_end|>",
                       pad_token="<|endoftext|>", unk_token=None, bos_token=None)
    t.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    t.add_tokens(QWEN_CONTROL)  # as Qwen2.5 ships them: added tokens not flagged special
    ids = {s: t.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    text = dict(TEXT, vocab_size=len(t), rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if qwen2_5:
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    cfg = cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, temporal_patch_size=2, merge_size=2)
    return cfg, t, ip, QWEN_TEMPLATE, {"processor_class": cls.__name__.replace("Config", "Processor")}


def _llava(next_: bool = False):
    t = LlamaTokenizer(tokenizer_object=_bpe(600, ["<unk>", "<s>", "</s>", "<image>", "<pad>"]), bos_token="<s>",
                       eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_bos_token=True)
    t.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)
    text = LlamaConfig(**TEXT, vocab_size=len(t), bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    image = t.convert_tokens_to_ids("<image>")
    processor = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    if next_:
        pinpoints = [[56, 112], [112, 56], [112, 112]]
        cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image,
                              image_grid_pinpoints=pinpoints, vision_feature_layer=-1)
        ip = LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints)
        return cfg, t, ip, LLAVA_TEMPLATE, processor | {"processor_class": "LlavaNextProcessor"}
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image, vision_feature_layer=-1, image_seq_length=16)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return cfg, t, ip, LLAVA_TEMPLATE, processor | {"processor_class": "LlavaProcessor"}


def _idefics3():
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
    t = GPT2Tokenizer(tokenizer_object=_bpe(700, special), bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                      pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    t.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]})
    t.add_tokens(rows)  # tile markers: added, not flagged special
    text = LlamaConfig(**TEXT, vocab_size=len(t), bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    cfg = Idefics3Config(vision_config=vision, text_config=text.to_dict(), image_token_id=t.convert_tokens_to_ids("<image>"), scale_factor=2)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56})
    return cfg, t, ip, IDEFICS_TEMPLATE, {"image_seq_len": 4, "processor_class": "Idefics3Processor"}


_BUILDERS = {
    "qwen2_vl": lambda: _qwen(Qwen2VLConfig),
    "qwen2_5_vl": lambda: _qwen(Qwen2_5_VLConfig, qwen2_5=True),
    "llava": _llava,
    "llava_next": lambda: _llava(next_=True),
    "idefics3": _idefics3,
}


def make_checkpoint(family: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` checkpoint to ``path`` exactly as ``save_pretrained`` lays out a Hub download."""
    cfg, tokenizer, image_processor, template, processor = _BUILDERS[family]()
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps(processor))
    if family.startswith("qwen"):
        (path / "chat_template.jinja").write_text(template)
    else:
        (path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return path
