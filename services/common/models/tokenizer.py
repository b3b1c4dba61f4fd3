"""Offline tokenizer for built VLMs: a small byte-level BPE trained deterministically on the world's text.

Byte-level means every string is encodable (no unknown token) while the vocabulary stays small
(~1k), so a tiny model's embeddings stay tiny. Training is deterministic: `tokenizers` breaks
ties between equally frequent pairs by pair id, and the corpus order is fixed (tested across
processes). The special tokens both architectures need come first, at fixed ids 0..7.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
LLAVA_IMAGE = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, LLAVA_IMAGE)

# One image placeholder per image in the user turn; the processor expands it to the image's token count.
_IMAGE_PART = {
    "qwen2_vl": VISION_START + IMAGE_PAD + VISION_END,
    "llava": LLAVA_IMAGE + "\n",
}

_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '@IMAGE@' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def chat_template(arch: Literal["qwen2_vl", "llava"]) -> str:
    """ChatML-style jinja template (Qwen's turns, no default system prompt) with the arch's image placeholder."""
    return _TEMPLATE.replace("@IMAGE@", _IMAGE_PART[arch])


# Words of the synthetic VQA world that must tokenise compactly even before the data corpus exists.
_WORDS = """
red green blue yellow orange purple pink brown black white gray grey cyan magenta violet gold silver
circle circles square squares triangle triangles star stars rectangle rectangles diamond diamonds
hexagon hexagons ellipse oval cross heart shape shapes object objects dot dots line lines
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
digit digits number numbers count bar bars chart charts plot label labels value values axis
tallest shortest highest lowest largest smallest biggest most least more fewer less same
left right top bottom middle center centre above below next near far inside outside
yes no true false none unknown answer question image picture photo scene background foreground
what which how many much is are there the a an of in on at to this that these those with and or
colour color size kind type big small large tiny medium dark light bright pale
user assistant system
Answer with a single word. Answer with a number. Reply briefly.
"""

_QUESTIONS = [
    "What colour is the shape?", "What color is the shape?", "What shape is in the image?",
    "How many circles are there?", "How many squares are in the image?", "How many objects are there?",
    "How many shapes are in the picture?", "What digit is shown?", "Which digit is in the image?",
    "Which bar is the tallest?", "Which bar is the shortest?", "What is the value of bar A?",
    "Is there a red circle?", "What colour is the background?", "What colour is the largest shape?",
    "Which label has the highest value?", "Count the triangles.", "Name the shape.",
]


def fallback_corpus() -> list[str]:
    """A fixed corpus of the world's vocabulary: colours, shapes, numbers, chart words, question forms."""
    words = _WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    numbers = [" ".join(str(n) for n in range(k, k + 10)) for k in range(0, 100, 10)]
    letters = [" ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), " ".join("abcdefghijklmnopqrstuvwxyz")]
    roles = ["user\n", "assistant\n", "system\n"]
    return roles + _QUESTIONS + lines + numbers + letters + [w.capitalize() for w in words]


def default_corpus() -> list[str]:
    """The fallback corpus plus the synthetic world's own text."""
    # Imported here: the data generator pulls in numpy and every benchmark, which a loaded model never needs.
    from services.common.data.corpus import corpus_texts

    return fallback_corpus() + list(corpus_texts())


def train_bpe(corpus: Iterable[str], vocab_size: int = 1024, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Train a byte-level BPE (`tokenizers`) on ``corpus``; the same corpus and size give the same merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer, arch: Literal["qwen2_vl", "llava"]) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around ``tok`` with pad/eos, left padding and the arch's chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, IM_END)],
        padding_side="left",
        model_max_length=4096,
        chat_template=chat_template(arch),
        clean_up_tokenization_spaces=False,
    )


@functools.lru_cache(maxsize=8)
def _trained_default(vocab_size: int) -> str:
    return train_bpe(default_corpus(), vocab_size).to_str()


def build_tokenizer(
    arch: Literal["qwen2_vl", "llava"] = "qwen2_vl",
    vocab_size: int = 1024,
    corpus: Sequence[str] | None = None,
) -> PreTrainedTokenizerFast:
    """The tokenizer of a built model. ``corpus=None`` uses :func:`default_corpus` (cached per process)."""
    raw = Tokenizer.from_str(_trained_default(vocab_size)) if corpus is None else train_bpe(corpus, vocab_size)
    return wrap_tokenizer(raw, arch)
