"""PromptEmbedder with the real frozen MiniLM: shape, determinism, caching, image sensitivity."""
from __future__ import annotations

import torch
from PIL import Image
from torch.testing import assert_close

from services.orchestrator.embedding import PromptEmbedder, image_descriptor


def solid(colour: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def test_shape_and_layout(embedder: PromptEmbedder) -> None:
    x = embedder.embed(["How many circles are there?", "What colour is the bar?"], [solid((255, 0, 0)), None])

    assert embedder.dim == 384 + 3 * 16 + 3 * 8 + 1
    assert x.shape == (2, embedder.dim) and x.dtype == torch.float32
    assert_close(x[:, :384].norm(dim=1), torch.ones(2))  # unit MiniLM vectors first (prototype space)
    assert (x[1, 384:] == 0).all() and x[0, -1] == 1.0  # no image: image part zero, flag off


def test_deterministic_across_calls_and_instances(embedder: PromptEmbedder) -> None:
    questions, images = ["Which shape is largest?", "How many dots?"], [solid((0, 128, 0)), solid((10, 20, 30))]

    first = embedder.embed(questions, images)
    again = embedder.embed(list(reversed(questions)), list(reversed(images))).flip(0)
    other = PromptEmbedder(embedder.encoder).embed(questions, images)

    assert torch.equal(first, again)
    assert torch.equal(first, other)  # another instance, another cache: the very same bits


def test_a_text_gets_the_same_bits_whatever_it_was_first_encoded_beside(embedder: PromptEmbedder) -> None:
    # A resumed run starts with an empty cache and meets a prompt in another company than the
    # uninterrupted run did (there, maybe first among the router pairs): its vector must not change.
    q = "How many circles are in the image?"
    alone = PromptEmbedder(embedder.encoder).embed_text([q])[0]
    beside = PromptEmbedder(embedder.encoder).embed_text(["a much longer question " * 8, q, "Which digit?"])[1]

    assert torch.equal(alone, beside)  # batched MiniLM differs by ~1e-7 with the padding


def test_different_images_give_different_features_same_text_same_text_part(embedder: PromptEmbedder) -> None:
    x = embedder.embed(["How many squares?"] * 2, [solid((255, 0, 0)), solid((0, 0, 255))])

    assert torch.equal(x[0, :384], x[1, :384])
    assert (x[0, 384:] - x[1, 384:]).abs().max() > 0.1


def test_texts_are_encoded_once() -> None:
    class Counting:
        dim = 3

        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode(self, texts):
            self.seen += list(texts)
            return torch.tensor([[float(len(t)), 0.0, 1.0] for t in texts])

    enc = Counting()
    emb = PromptEmbedder(enc)

    emb.embed(["a", "bb", "a"], [None, None, None])
    x = emb.embed(["bb", "ccc"], [None, None])

    assert enc.seen == ["a", "bb", "ccc"]
    assert x[:, 0].tolist() == [2.0, 3.0]


def test_image_descriptor_parts_have_unit_scale() -> None:
    d = image_descriptor(solid((255, 255, 255)), thumb=4, bins=8)

    assert_close(d[:48].norm(), torch.tensor(1.0))  # a white thumbnail: every entry at its maximum
    assert_close(d[48:72].norm(), torch.tensor(1.0))
    assert d[-1] == 1.0
