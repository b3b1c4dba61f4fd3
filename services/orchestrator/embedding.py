"""The router's frozen input embedding of a (prompt, image): MiniLM text vector + a tiny image descriptor.

    embedder = PromptEmbedder()
    x = embedder.embed(questions, images)     # [P, embedder.dim] float32

Layout of a feature row (the text part first, so the prototype router can compare its first 384
dims with the nodes' MiniLM prototypes, which live in exactly that space):
  [0, 384)        MiniLM (all-MiniLM-L6-v2) sentence embedding of the question, unit norm
  next 3*T*T      T x T box-downsampled RGB thumbnail, (pixel - 0.5) * 2 / sqrt(3*T*T): norm <= 1
  next 3*B        per-channel colour histogram with B bins, sqrt of the frequencies (each channel
                  then has unit norm) / sqrt(3): norm 1
  last 1          1.0 when there is an image, 0.0 when not (the image parts are then all 0)
Each part has norm about 1, so none drowns the others before the gate's own standardisation.

Frozen and deterministic: no parameters are trained, the encoder runs in eval mode, and a text
vector is computed once per process and cached by text (the pool repeats prompts every epoch).
A text is encoded on its own, never beside others, so its vector is a function of the text alone:
the same in every process, whatever was encoded before it (a resumed run needs that).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image as PILImage

HIST_SIDE = 64  # histograms are taken on a 64x64 copy: the colours, not every pixel, matter


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


def image_descriptor(image: PILImage.Image | None, thumb: int, bins: int) -> torch.Tensor:
    """The fixed image part of a feature row (see the module docstring): [3*thumb^2 + 3*bins + 1]."""
    n_thumb, n_hist = 3 * thumb * thumb, 3 * bins
    out = torch.zeros(n_thumb + n_hist + 1)
    if image is None:
        return out
    from PIL import Image

    rgb = image.convert("RGB")
    small = np.asarray(rgb.resize((thumb, thumb), Image.Resampling.BOX), dtype=np.float64) / 255.0
    out[:n_thumb] = torch.from_numpy((small.reshape(-1) - 0.5) * 2.0 / np.sqrt(n_thumb))
    pixels = np.asarray(rgb.resize((HIST_SIDE, HIST_SIDE), Image.Resampling.BOX), dtype=np.int64).reshape(-1, 3)
    hist = np.stack([np.bincount(pixels[:, c] * bins // 256, minlength=bins) for c in range(3)]).astype(np.float64)
    hist /= hist.sum(1, keepdims=True)
    out[n_thumb : n_thumb + n_hist] = torch.from_numpy(np.sqrt(hist).reshape(-1) / np.sqrt(3.0))
    out[-1] = 1.0
    return out


class PromptEmbedder:
    """Frozen (question, image) -> feature row; see the module docstring."""

    def __init__(self, encoder: TextEncoder | None = None, *, thumb: int = 4, bins: int = 8,
                 cache_size: int = 65536, text_dim: int | None = None) -> None:
        """``encoder``: anything with ``dim`` and ``encode(texts) -> [N, dim]`` (default: the shared
        MiniLM, loaded on first use). ``text_dim`` lets ``dim`` be known without loading it."""
        if thumb < 1 or bins < 1:
            raise ValueError("thumb and bins must be >= 1")
        self._encoder = encoder
        self.thumb = thumb
        self.bins = bins
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        if text_dim is None:
            from services.common.text_encoder import EMBED_DIM

            text_dim = encoder.dim if encoder is not None else EMBED_DIM
        self.text_dim = int(text_dim)
        self.image_dim = 3 * thumb * thumb + 3 * bins + 1

    @property
    def dim(self) -> int:
        return self.text_dim + self.image_dim

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from services.common.text_encoder import get_encoder

            self._encoder = get_encoder()
        return self._encoder

    def embed_text(self, questions: Sequence[str]) -> torch.Tensor:
        """[P, text_dim]: cached text vectors; only texts not seen before are encoded."""
        todo = [q for q in dict.fromkeys(questions) if q not in self._cache]
        if todo:
            # One text per forward pass: a batch pads its texts to the longest, and the padding moves
            # MiniLM's float result (~1e-7), so a vector would depend on the texts it was first encoded
            # beside, and a resumed run (its cache empty) would route with other bits than the
            # uninterrupted one.
            vectors = torch.cat([self.encoder.encode([q]) for q in todo]).float()
            if vectors.shape != (len(todo), self.text_dim):
                raise ValueError(f"encoder returned {tuple(vectors.shape)}, expected [{len(todo)}, {self.text_dim}]")
            for q, v in zip(todo, vectors, strict=True):
                self._cache[q] = v.clone()
        rows = []
        for q in questions:
            self._cache.move_to_end(q)
            rows.append(self._cache[q])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(rows) if rows else torch.zeros(0, self.text_dim)

    def embed(self, questions: Sequence[str], images: Sequence[PILImage.Image | None]) -> torch.Tensor:
        """features[P, dim] float32 for P (question, image) prompts; an image may be None."""
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions but {len(images)} images")
        if not questions:
            return torch.zeros(0, self.dim)
        text = self.embed_text(questions)
        img = torch.stack([image_descriptor(im, self.thumb, self.bins) for im in images])
        return torch.cat([text, img], dim=1).float()


__all__ = ["PromptEmbedder", "TextEncoder", "image_descriptor"]
