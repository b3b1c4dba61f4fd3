"""DynamicBatcher on its own: coalescing, order, size cap, bounded queue, cancellation, errors."""
from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.errors import NotReady, Overloaded
from services.reward_node.batcher import DynamicBatcher


class Recorder:
    """run_batch that doubles its inputs, records batch sizes, and can be held by a gate."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[float]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("model failed")
        return [2.0 * x for x in items]


def test_concurrent_jobs_coalesce_into_one_batch_in_order(arun) -> None:
    rec = Recorder()

    async def scenario() -> list[list[float]]:
        b = DynamicBatcher(rec, max_batch_size=64, max_wait_s=0.2, max_queue=100)
        b.start()
        out = await asyncio.gather(*(b.submit([10 * j + i for i in range(3)]) for j in range(5)))
        await b.close()
        return out

    out = arun(scenario())

    assert out == [[2.0 * (10 * j + i) for i in range(3)] for j in range(5)]
    assert [len(x) for x in rec.batches] == [15]


def test_batches_never_exceed_max_batch_size_and_a_job_may_span_batches(arun) -> None:
    rec = Recorder()

    async def scenario() -> list[float]:
        b = DynamicBatcher(rec, max_batch_size=4, max_wait_s=0.0, max_queue=100)
        b.start()
        out = await b.submit(list(range(10)))
        await b.close()
        return out

    assert arun(scenario()) == [2.0 * i for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]


def test_a_lone_request_waits_at_most_max_wait(arun) -> None:
    rec = Recorder()

    async def scenario() -> float:
        b = DynamicBatcher(rec, max_batch_size=64, max_wait_s=0.05, max_queue=100)
        b.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.submit([1])
        took = loop.time() - t0
        await b.close()
        return took

    assert 0.04 <= arun(scenario()) < 1.0


def test_full_queue_refuses_the_whole_job_with_overloaded(arun) -> None:
    rec = Recorder()
    rec.gate.clear()

    async def scenario() -> tuple[int, str]:
        b = DynamicBatcher(rec, max_batch_size=2, max_wait_s=0.0, max_queue=3)
        b.start()
        running = asyncio.ensure_future(b.submit([1, 2]))  # taken into the (held) first batch
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.submit([3, 4, 5]))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            await b.submit([6])
        depth = b.queue_depth
        rec.gate.set()
        await asyncio.gather(running, queued)
        await b.close()
        return depth, str(refused.value)

    depth, message = arun(scenario())

    assert depth == 3
    assert "batching.max_queue=3" in message


def test_cancelled_caller_samples_are_dropped_before_the_model(arun) -> None:
    rec = Recorder()
    rec.gate.clear()

    async def scenario() -> int:
        b = DynamicBatcher(rec, max_batch_size=2, max_wait_s=0.0, max_queue=10)
        b.start()
        first = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(b.submit([7, 8, 9]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)
        depth = b.queue_depth
        rec.gate.set()
        await first
        assert await b.submit([3]) == [6.0]
        await b.close()
        return depth

    assert arun(scenario()) == 0
    assert all(x not in batch for batch in rec.batches for x in (7, 8, 9))


def test_model_error_fails_the_jobs_of_that_batch_only(arun) -> None:
    rec = Recorder(fail_on=13)

    async def scenario() -> tuple[BaseException | None, list[float]]:
        b = DynamicBatcher(rec, max_batch_size=8, max_wait_s=0.0, max_queue=10)
        b.start()
        bad = await asyncio.gather(b.submit([13]), return_exceptions=True)
        good = await b.submit([1])
        await b.close()
        return bad[0], good

    err, good = arun(scenario())

    assert isinstance(err, RuntimeError) and good == [2.0]


def test_submit_before_start_or_after_close_is_not_ready(arun) -> None:
    async def scenario() -> None:
        b = DynamicBatcher(Recorder(), max_batch_size=2, max_wait_s=0.0, max_queue=4)
        with pytest.raises(NotReady):
            await b.submit([1])
        b.start()
        await b.close()
        with pytest.raises(NotReady):
            await b.submit([1])

    arun(scenario())


def test_close_finishes_queued_work(arun) -> None:
    rec = Recorder()

    async def scenario() -> list[float]:
        b = DynamicBatcher(rec, max_batch_size=2, max_wait_s=5.0, max_queue=10)
        b.start()
        pending = asyncio.ensure_future(b.submit([1]))  # would wait 5 s for company
        await asyncio.sleep(0.01)
        await b.close()
        return await pending

    assert arun(scenario()) == [2.0]
