"""Dynamic batching across concurrent requests (the Triton "max queue delay" scheme).

Each request submits its samples as one job and awaits the job's scores. A single worker task
takes samples in arrival order into batches of at most ``max_batch_size``; a batch runs as soon as
it is full, or when its oldest sample has waited ``max_wait_s``. The model runs in a one-thread
executor, so the event loop keeps accepting (and queueing) requests while a batch computes: under
load, the next batch fills while the current one runs. A job may span several batches, and a
batch may mix samples of many jobs.

Admission is bounded: a job whose samples would push the queue beyond ``max_queue`` is refused
at once with ``Overloaded`` (RESOURCE_EXHAUSTED on the wire), all or nothing, so memory stays
bounded whatever the load. With ``max_queue_delay_s``, a job is also refused when its samples
would wait longer than that before their batch starts, estimated from the queue depth and the
model's measured throughput (an average over recent batches): under overload the queue stays
short, so admitted calls keep their latency and refusals come early and cheap (load shedding by
queue time, as CoDel and Triton's queue policy do), instead of every call waiting out a long
queue. A job into an empty queue is always admitted, so a call larger than the budget still runs. A caller that goes away (deadline, cancel) has its remaining samples
dropped before they reach the model.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class _Job(Generic[T]):
    items: Sequence[T]
    future: asyncio.Future[list[float]]
    results: list[float | None] = field(default_factory=list)
    queued: int = 0  # samples of this job still in the queue
    left: int = 0  # samples without a result yet

    @property
    def dead(self) -> bool:
        return self.future.done()


@dataclass(frozen=True)
class BatchStats:
    """One batch that ran: its size and how long the model took (for metrics hooks)."""

    size: int
    seconds: float


class DynamicBatcher(Generic[T]):
    """``await batcher.submit(items) -> scores`` with cross-request batching; see the module docstring.

    ``run_batch(items) -> scores`` is called in a worker thread with 1..max_batch_size items and
    must return one float per item, in order. An exception fails every job with a sample in that
    batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[float]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_queue_delay_s: float | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_queue_delay_s = max_queue_delay_s
        self._rate: float | None = None  # samples per second of recent batches (EWMA), None before the first
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._queue: collections.deque[tuple[_Job[T], int, float]] = collections.deque()
        self._depth = 0  # live samples in the queue (cancelled jobs' samples excluded)
        self._wakeup = asyncio.Event()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running loop."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-batch")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="rm-batcher")

    async def close(self) -> None:
        """Refuse new jobs, finish every queued sample, then stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queue_depth(self) -> int:
        """Samples waiting for a batch (not counting the batch running now)."""
        return self._depth

    # ---- submitting -----------------------------------------------------------------------------
    async def submit(self, items: Sequence[T]) -> list[float]:
        """Scores of ``items`` in order. Raises Overloaded when the queue cannot take them all, and
        NotReady when the batcher is not running."""
        if not items:
            return []
        if self._worker is None or self._closing:
            raise NotReady("the reward model is not serving (starting or shutting down)")
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(items, loop.create_future(), [None] * len(items), len(items), len(items))
        now = time.monotonic()
        self._queue.extend((job, i, now) for i in range(len(items)))
        self._set_depth(self._depth + len(items))
        self._wakeup.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            if not job.future.done():
                job.future.cancel()
                self._set_depth(self._depth - job.queued)
                job.queued = 0
            raise

    def check_room(self, n: int) -> None:
        """Raise Overloaded when n more samples would not fit in the queue now. Callers use it to
        refuse a call before costly preparation (image decoding); submit checks again."""
        if self._depth + n > self.max_queue:
            raise Overloaded(
                f"queue full: {self._depth} samples waiting, {n} more would exceed "
                f"batching.max_queue={self.max_queue}; retry later"
            )
        if self.max_queue_delay_s is not None and self._rate and self._depth:
            wait = (self._depth + n) / self._rate
            if wait > self.max_queue_delay_s:
                raise Overloaded(
                    f"busy: {self._depth} samples waiting, about {wait * 1e3:.0f} ms of work with {n} more, over "
                    f"batching.max_queue_delay_ms={self.max_queue_delay_s * 1e3:g}; retry later"
                )

    @property
    def samples_per_s(self) -> float | None:
        """The model's measured throughput (EWMA over batches), None before the first batch."""
        return self._rate

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

    # ---- the worker ------------------------------------------------------------------------------
    def _drop_dead_head(self) -> None:
        while self._queue and self._queue[0][0].dead:
            self._queue.popleft()

    async def _wait_for_batch(self) -> None:
        """Return when a full batch is queued, the oldest sample's wait is over, or we are closing."""
        while True:
            self._drop_dead_head()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._depth >= self.max_batch_size or self._closing:
                return
            remaining = self._queue[0][2] + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[tuple[_Job[T], int]]:
        batch: list[tuple[_Job[T], int]] = []
        while self._queue and len(batch) < self.max_batch_size:
            job, i, _ = self._queue.popleft()
            if job.dead:
                continue
            job.queued -= 1
            batch.append((job, i))
        self._set_depth(self._depth - len(batch))
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                if self._closing and not self._queue:
                    return
                continue
            items = [job.items[i] for job, i in batch]
            t0 = time.perf_counter()
            try:
                scores = await loop.run_in_executor(self._executor, self._run_batch, items)
                if len(scores) != len(items):
                    raise RuntimeError(f"run_batch returned {len(scores)} scores for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                log.exception("reward-model batch of %d failed", len(items))
                for job, _ in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - t0
            rate = len(items) / max(seconds, 1e-6)
            self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(items), seconds))
            for (job, i), score in zip(batch, scores, strict=True):
                if job.future.done():
                    continue
                job.results[i] = float(score)
                job.left -= 1
                if job.left == 0:
                    job.future.set_result([float(x) for x in job.results])  # type: ignore[arg-type]


__all__ = ["BatchStats", "DynamicBatcher"]
