"""The reward node's domain core: load the RM, validate, batch, score, mix in the rule parts, describe.

No gRPC here: the servicer turns protobuf into ``GroupInput`` and the results below back into
protobuf. Life cycle: ``loading`` (Score raises NotReady) -> ``serving`` -> ``draining`` (set by the
app when a stop begins; calls already admitted finish) -> ``stopped``.

Privacy: the only things that leave through this class are scores, their hybrid parts and the
coarse description (ids, kind, version, score statistics, limits and, if the config asks, the
domain prototype through the Gaussian mechanism of services/reward_node/privacy.py: noise
calibrated to prototype.epsilon / prototype.delta unless prototype.noise_sigma says otherwise, and
the resulting (epsilon, delta) published with it). The prototype's noise is drawn once per
checkpoint from a seed derived from private data (the data hash and the weights' hashes), so
asking again, or after a restart, returns the same noisy vector and averaging calls cannot remove
the noise.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from services.common import metrics
from services.common.admission import Budget
from services.common.config import LimitsSection, RewardNodeSettings
from services.common.errors import InvalidInput, NotReady
from services.common.validation import check_request_pixels
from services.reward_node.batcher import BatchStats, DynamicBatcher
from services.reward_node.checkpoint import LoadedRM, load_checkpoint
from services.reward_node.hybrid import HybridWeights, combine, overall_stats
from services.reward_node.privacy import epsilon_for, mean_sensitivity, sigma_for
from services.reward_node.validation import (
    GroupInput,
    ValidGroup,
    check_group_count,
    check_text,
    decode_groups,
    group_prefixes,
    image_sizes,
)

log = logging.getLogger(__name__)

State = Literal["not_loaded", "loading", "serving", "draining", "stopped"]
STATE_NUMBER = {"not_loaded": 0, "loading": 1, "serving": 2, "draining": 3, "stopped": 0}
# Each prompt embedding of the prototype has at most this L2 norm: the MiniLM encoder L2-normalises.
PROTOTYPE_CLIP_NORM = 1.0


@dataclass(frozen=True)
class ResponseToScore:
    """One response to score with its prompt and image (the unit the batcher batches); the responses of
    a group share the image object."""

    prompt: str
    image: Image.Image | None
    response: str


@dataclass(frozen=True)
class ScoredAnswer:
    """The node's score of one answer and its weighted parts (which add up to ``overall``)."""

    overall: float
    parts: dict[str, float]


@dataclass(frozen=True)
class Prototype:
    """The published domain prototype: the noisy mean embedding and how it was made (the Gaussian
    mechanism with this clip norm and noise std, which is (epsilon, delta)-DP)."""

    embedding: list[float]
    noise_sigma: float
    embedder: str
    epsilon: float = math.inf
    delta: float = 0.0
    clip_norm: float = PROTOTYPE_CLIP_NORM


@dataclass(frozen=True)
class NodeDescription:
    """What GetInfo publishes (coarse metadata only)."""

    node_id: str
    rm_kind: str
    objectives: list[str]
    model_version: str
    score_mean: float
    score_std: float
    limits: LimitsSection
    state: State
    prototype: Prototype | None


def prototype_noise(loaded: LoadedRM, noise_sigma: float | None, epsilon: float, delta: float) -> tuple[float, float]:
    """(noise std, epsilon it achieves at `delta`) for the checkpoint's prototype: `noise_sigma`
    when set, else the smallest std that gives (epsilon, delta). The sensitivity is 2 / n for the
    mean of n unit-norm embeddings; a checkpoint that does not record n counts as n = 1."""
    if loaded.prototype is not None and float(loaded.prototype.norm()) > PROTOTYPE_CLIP_NORM + 1e-4:
        raise ValueError(f"prototype.publish: the checkpoint's prototype has norm {float(loaded.prototype.norm()):.3f} "
                         f"> {PROTOTYPE_CLIP_NORM}; it is not a mean of unit embeddings, so no DP guarantee holds")
    n = int(loaded.metadata.get("data", {}).get("n_train_pairs") or 0)
    if n < 1:
        log.warning("prototype: the checkpoint does not record how many prompts it averages; "
                    "calibrating for n = 1 (the most noise)")
        n = 1
    sensitivity = mean_sensitivity(n, PROTOTYPE_CLIP_NORM)
    sigma = sigma_for(epsilon, delta, sensitivity) if noise_sigma is None else noise_sigma
    return sigma, epsilon_for(sigma, delta, sensitivity)


def noisy_prototype(loaded: LoadedRM, sigma: float) -> list[float] | None:
    """The checkpoint's prototype plus N(0, sigma^2) noise, drawn from a private, per-checkpoint seed."""
    if loaded.prototype is None:
        return None
    proto = loaded.prototype.double().numpy()
    if sigma > 0:
        secret = json.dumps([loaded.metadata.get("data", {}).get("sha256"), loaded.metadata.get("files")], sort_keys=True)
        seed = int.from_bytes(hashlib.sha256(b"mor-prototype-noise\0" + secret.encode()).digest()[:8], "little")
        proto = proto + np.random.default_rng(seed).normal(0.0, sigma, size=proto.shape)
    return [float(x) for x in proto]


class RewardNodeCore:
    """Scores groups of answers with the node's RM; see the module docstring."""

    def __init__(self, settings: RewardNodeSettings, loaded: LoadedRM | None = None) -> None:
        """``loaded``: an RM already in memory (tests, benchmarks); None loads model.checkpoint in ``load``."""
        self.settings = settings
        self.node_id = settings.node_id
        self.weights = HybridWeights.from_section(settings.model)
        self._loaded = loaded
        self._batcher: DynamicBatcher[ResponseToScore] | None = None
        self._prototype: Prototype | None = None
        # Decoded image pixels held by calls in flight (decoding, queued or being scored).
        self._pixels = Budget(settings.batching.max_pending_pixels, "image pixels", "batching.max_pending_pixels")
        # Labelled metric children, looked up once (labels() takes a lock and a dict lookup per call).
        self._m_scores = metrics.REWARD_NODE_SCORES.labels(self.node_id)
        self._m_batch = metrics.REWARD_NODE_BATCH_SIZE.labels(self.node_id)
        self._m_model = metrics.REWARD_NODE_MODEL_LATENCY.labels(self.node_id)
        self._m_queue = metrics.REWARD_NODE_QUEUE_DEPTH.labels(self.node_id)
        self._m_state = metrics.REWARD_NODE_MODEL_STATE.labels(self.node_id)
        self._state: State = "not_loaded"
        self._set_state("not_loaded")

    # ---- life cycle -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, state: State) -> None:
        self._state = state
        self._m_state.set(STATE_NUMBER[state])

    @property
    def loaded(self) -> LoadedRM:
        if self._loaded is None:
            raise NotReady("the reward model is not loaded yet")
        return self._loaded

    async def load(self) -> None:
        """Load the checkpoint (off the event loop), start the batcher, and start serving."""
        self._set_state("loading")
        s = self.settings
        if s.model.torch_threads:
            torch.set_num_threads(s.model.torch_threads)
        if self._loaded is None:
            if s.model.checkpoint is None:
                raise ValueError("model.checkpoint: the trained RM to serve is not set")
            self._loaded = await asyncio.to_thread(load_checkpoint, s.model.checkpoint)
        self._loaded.model.eval()
        # One tiny forward now, so lazy parts (the shared text encoder, first-call set-up) load
        # before the node reports SERVING rather than inside the first caller's deadline.
        await asyncio.to_thread(self._loaded.model.score_batch, ["warm-up"], [None], ["warm-up"])
        if s.prototype.publish and self._loaded.prototype is not None:
            p = s.prototype
            sigma, epsilon = prototype_noise(self._loaded, p.noise_sigma, p.epsilon, p.delta)
            emb = noisy_prototype(self._loaded, sigma)
            assert emb is not None
            embedder = str(self._loaded.metadata.get("prototype", {}).get("embedder", ""))
            self._prototype = Prototype(emb, sigma, embedder, epsilon, p.delta)
            if sigma == 0:
                log.warning("%s: publishing the EXACT mean prompt embedding (prototype.noise_sigma=0): "
                            "no differential-privacy guarantee", self.node_id)
            else:
                log.info("%s: prototype published by the Gaussian mechanism: clip norm %g, noise std %.4g, "
                         "(epsilon, delta) = (%.3g, %.3g)", self.node_id, PROTOTYPE_CLIP_NORM, sigma, epsilon, p.delta)
        b = s.batching
        self._batcher = DynamicBatcher(
            self._run_batch, max_batch_size=b.max_batch_size, max_wait_s=b.max_wait_ms / 1000.0,
            max_queue=b.max_queue, on_batch=self._on_batch, on_queue_depth=self._on_queue_depth,
            max_queue_delay_s=None if b.max_queue_delay_ms is None else b.max_queue_delay_ms / 1000.0,
        )
        self._batcher.start()
        self._set_state("serving")
        log.info("%s: serving %s RM %s", self.node_id, self._loaded.model.kind, self._loaded.model_version)

    def begin_drain(self) -> None:
        """Mark the node draining (GetInfo says so); admitted calls still finish."""
        if self._state in ("serving", "loading"):
            self._set_state("draining")

    async def close(self) -> None:
        """Finish queued work and stop the batcher."""
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        self._set_state("stopped")

    # ---- scoring --------------------------------------------------------------------------------
    async def score_groups(
        self, groups: Sequence[GroupInput], *, batch_call: bool = False
    ) -> list[list[ScoredAnswer]]:
        """Scores of every answer of every group, in order. ``batch_call`` selects ScoreBatch rules
        (group count limit, field names prefixed with ``groups[i].``).

        Cheap checks and admission come before any image work: texts, the queue's room, then the
        image headers (dimensions only) and the call's pixels against the per-call limit and the
        node-wide pixel budget; only then are images decoded, in a worker thread, never on the loop.
        """
        batcher = self._batcher
        if batcher is None or self._state not in ("serving", "draining"):
            raise NotReady(f"reward node {self.node_id} is {self._state.replace('_', ' ')}; retry later")
        limits = self.settings.limits
        if batch_call:
            check_group_count(len(groups), limits)
        prefixes = group_prefixes(len(groups), batch_call)
        for g, where in zip(groups, prefixes, strict=True):
            check_text(g, limits, where)
        n = sum(len(g.responses) for g in groups)
        if n > self.settings.batching.max_queue:  # could never be admitted: not a retry case
            raise InvalidInput(
                f"groups: {n} responses in one call, more than the node ever queues "
                f"(batching.max_queue={self.settings.batching.max_queue}); split the call",
                reason="CALL_TOO_LARGE",
            )
        batcher.check_room(n)
        pixels = 0
        if any(g.image_data is not None for g in groups):
            sizes = await asyncio.to_thread(image_sizes, groups, limits, prefixes)
            pixels = check_request_pixels(sum(w * h for w, h in sizes), limits, "groups" if batch_call else "image")
        with self._pixels.hold(pixels):
            if pixels:
                valid = await asyncio.to_thread(decode_groups, groups, limits, prefixes)
            else:
                valid = [ValidGroup(g.prompt, list(g.responses), None, g.group_id) for g in groups]
            items = [ResponseToScore(g.prompt, g.image, r) for g in valid for r in g.responses]
            rm = await batcher.submit(items)
        overall, parts = combine(rm, [s.response for s in items], self.weights)
        for x in overall:
            self._m_scores.observe(x)
        out: list[list[ScoredAnswer]] = []
        k = 0
        for g in valid:
            n = len(g.responses)
            out.append([ScoredAnswer(overall[j], parts[j]) for j in range(k, k + n)])
            k += n
        return out

    def _run_batch(self, items: list[ResponseToScore]) -> list[float]:
        """Worker thread: one forward pass of the RM over a batch."""
        model = self.loaded.model
        scores = model.score_batch([s.prompt for s in items], [s.image for s in items], [s.response for s in items])
        return scores.tolist()

    def _on_batch(self, stats: BatchStats) -> None:
        self._m_batch.observe(stats.size)
        self._m_model.observe(stats.seconds)

    def _on_queue_depth(self, depth: int) -> None:
        self._m_queue.set(depth)

    # ---- description ----------------------------------------------------------------------------
    def describe(self) -> NodeDescription:
        """GetInfo's content; works while loading (then without model facts)."""
        loaded = self._loaded
        mean = std = 0.0
        kind = version = ""
        if loaded is not None:
            meta = loaded.metadata
            kind, version = f"bt_{loaded.model.kind}", loaded.model_version
            parts = meta.get("parts")
            if parts:
                mean, std = overall_stats(parts, self.weights)
            else:
                mean, std = float(meta.get("score_mean", 0.0)), float(meta.get("score_std", 0.0))
        objectives = ["learned_preference" if n == "rm" else n for n in self.weights.active()]
        return NodeDescription(
            node_id=self.node_id, rm_kind=kind, objectives=objectives, model_version=version,
            score_mean=mean, score_std=std, limits=self.settings.limits, state=self._state,
            prototype=self._prototype,
        )

    @property
    def model_version(self) -> str:
        """Version of the serving RM ('' before it is loaded)."""
        return self._loaded.model_version if self._loaded is not None else ""

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth if self._batcher is not None else 0


__all__ = [
    "PROTOTYPE_CLIP_NORM",
    "NodeDescription",
    "Prototype",
    "RewardNodeCore",
    "ResponseToScore",
    "ScoredAnswer",
    "noisy_prototype",
    "prototype_noise",
]
