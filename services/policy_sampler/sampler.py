"""The sampler's domain core: admission, version tagging and the update protocol around a backend.

`Sampler.generate` checks a call (texts, tokens, sampling, image headers: no bitmap yet), admits it
against `max_queued_samples` and the decoded-pixel budget `max_pending_pixels` (Overloaded beyond),
only then decodes its images (in a worker thread), and runs it under the version gate's read side, so the version it reports is the one whose weights
produced every completion. `Sampler.update_weights` checks the header and version, receives and
verifies the payload, has the backend validate it, and swaps it in under the gate's write side.
Updates run one at a time. No grpc here: the servicer adapts protobuf to these calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from services.common import metrics
from services.common.admission import Budget
from services.common.completions import Completion
from services.common.config import SamplerSettings
from services.common.config.variants import SamplerBackendName
from services.common.errors import NotReady, Overloaded, StalePolicy, VersionMismatch, status_name
from services.common.weights_codec import WeightsHeader
from services.policy_sampler.backends.base import ModelFacts, SamplerBackend
from services.policy_sampler.requests import GenerateCall, SamplerLimits, check_generate, decode_prompts
from services.policy_sampler.version_gate import VersionGate
from services.policy_sampler.weights import (
    check_header,
    check_version,
    receive_payload,
)

log = logging.getLogger(__name__)

ServingState = Literal["loading", "serving", "draining"]


@dataclass(frozen=True)
class GenerationResult:
    """Groups in request order (prompt_ids alongside) and the one version that produced them."""

    prompt_ids: tuple[str, ...]
    groups: tuple[tuple[Completion, ...], ...]
    policy_version: int
    request_id: str


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of an UpdateWeights call."""

    version: int
    applied: bool
    bytes_received: int


@dataclass(frozen=True)
class SamplerInfo:
    """What GetInfo reports."""

    model: ModelFacts
    backend: SamplerBackendName
    policy_version: int
    limits: SamplerLimits
    max_weights_bytes: int
    state: ServingState


class Sampler:
    """Serves one policy through one backend, with versioned, atomic weight updates."""

    def __init__(self, settings: SamplerSettings, backend: SamplerBackend) -> None:
        self._settings = settings
        self._backend = backend
        self._limits = SamplerLimits.from_settings(settings)
        self._gate = VersionGate()
        self._update_lock = asyncio.Lock()
        self._version = 0
        self._sha256 = ""
        self._queued = 0
        self._pixels = Budget(settings.max_pending_pixels, "image pixels", "max_pending_pixels")
        self._facts: ModelFacts | None = None
        self._draining = False

    # --- life cycle ---------------------------------------------------------------------------

    async def load(self) -> ModelFacts:
        """Load the initial policy (version 0)."""
        self._facts = await self._backend.load()
        metrics.SAMPLER_POLICY_VERSION.set(self._version)
        metrics.SAMPLER_QUEUE_DEPTH.set(0)
        return self._facts

    def begin_drain(self) -> None:
        """Refuse new work with NotReady from now on (the server is stopping)."""
        self._draining = True

    async def close(self) -> None:
        self._draining = True
        await self._backend.close()

    @property
    def ready(self) -> bool:
        return self._facts is not None and not self._draining

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def backend(self) -> SamplerBackend:
        return self._backend

    def info(self) -> SamplerInfo:
        state: ServingState = "loading" if self._facts is None else ("draining" if self._draining else "serving")
        facts = self._facts or ModelFacts(name="", arch="")
        return SamplerInfo(facts, self._backend.name, self._version, self._limits,
                           self._settings.max_weights_bytes, state)

    def _require_ready(self) -> None:
        if self._facts is None:
            raise NotReady("the policy is still loading")
        if self._draining:
            raise NotReady("the sampler is shutting down")

    # --- generation ---------------------------------------------------------------------------

    async def generate(self, call: GenerateCall) -> GenerationResult:
        """Check, admit, decode and run one Generate call; every completion comes from one policy version."""
        self._require_ready()
        # Tokenising and reading image headers is CPU work on caller bytes: off the loop.
        checked = await asyncio.to_thread(check_generate, call, self._limits, self._settings.sampling,
                                          self._backend.prompt_rules())
        rows = checked.num_samples
        if self._queued + rows > self._settings.max_queued_samples:
            raise Overloaded(
                f"sampler busy: {self._queued} completions queued, {rows} more would exceed "
                f"max_queued_samples {self._settings.max_queued_samples}; retry later"
            )
        self._queued += rows
        metrics.SAMPLER_QUEUE_DEPTH.set(self._queued)
        try:
            with self._pixels.hold(checked.pixels):
                job = await asyncio.to_thread(decode_prompts, checked) if checked.pixels else decode_prompts(checked)
                async with self._gate.reading():
                    version = self._version
                    expected = job.expected_policy_version
                    if expected is not None and expected != version:
                        cls = StalePolicy if version > expected else VersionMismatch
                        raise cls(f"expected policy version {expected}, but version {version} is serving")
                    t0 = time.perf_counter()
                    groups = await self._backend.generate(job.prompts, job.group_size, job.sampling)
                    elapsed = time.perf_counter() - t0
        finally:
            self._queued -= rows
            metrics.SAMPLER_QUEUE_DEPTH.set(self._queued)
        tokens = sum(len(s.token_ids) for g in groups for s in g)
        metrics.SAMPLER_GENERATE_LATENCY.observe(elapsed)
        metrics.SAMPLER_BATCH_SIZE.observe(rows)
        metrics.SAMPLER_GENERATED_TOKENS.inc(tokens)
        log.debug("generated %d completions (%d tokens) in %.3fs with policy v%d", rows, tokens, elapsed, version)
        return GenerationResult(
            prompt_ids=tuple(p.prompt_id for p in job.prompts),
            groups=tuple(tuple(g) for g in groups),
            policy_version=version,
            request_id=job.request_id,
        )

    # --- weight updates -----------------------------------------------------------------------

    async def update_weights(self, header: WeightsHeader, chunks: AsyncIterator[bytes]) -> UpdateResult:
        """Receive, verify, validate and atomically apply one update (one update at a time)."""
        t0 = time.perf_counter()
        try:
            result = await self._update(header, chunks)
        except Exception as exc:
            metrics.SAMPLER_WEIGHT_UPDATES.labels(status_name(exc)).inc()
            log.warning("weight update to v%d refused: %s", header.version, exc)
            raise
        metrics.SAMPLER_WEIGHT_UPDATES.labels("OK").inc()
        if result.applied:
            metrics.SAMPLER_WEIGHT_UPDATE_LATENCY.observe(time.perf_counter() - t0)
        return result

    async def _update(self, header: WeightsHeader, chunks: AsyncIterator[bytes]) -> UpdateResult:
        self._require_ready()
        check_header(header, self._settings.max_weights_bytes)
        if not check_version(header, self._version, self._sha256):
            return UpdateResult(self._version, False, 0)
        async with self._update_lock:
            # Another update may have landed while this one waited for the lock.
            if not check_version(header, self._version, self._sha256):
                return UpdateResult(self._version, False, 0)
            s = self._settings
            payload = await receive_payload(header, chunks, idle_timeout_s=s.weights_idle_timeout_s,
                                            total_timeout_s=s.weights_receive_timeout_s)
            t_received = time.perf_counter()
            prepared = await self._backend.prepare_weights(header, payload)
            t_prepared = time.perf_counter()
            async with self._gate.writing():
                t_locked = time.perf_counter()
                await self._backend.commit_weights(prepared)
                self._version, self._sha256 = header.version, header.sha256
            t_done = time.perf_counter()
        metrics.SAMPLER_POLICY_VERSION.set(self._version)
        log.info(
            "policy v%d (%s, %d bytes) swapped in: validate %.3fs, wait for in-flight %.3fs, swap %.3fs",
            header.version, header.kind, len(payload), t_prepared - t_received, t_locked - t_prepared, t_done - t_locked,
        )
        return UpdateResult(self._version, True, len(payload))


__all__ = ["GenerationResult", "Sampler", "SamplerInfo", "ServingState", "UpdateResult"]
