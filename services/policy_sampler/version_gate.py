"""The gate that makes a weight swap atomic for the generations around it."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class VersionGate:
    """A writer-preferring readers-writer lock for asyncio.

    Generations hold `reading()` (many at once); a weight swap holds `writing()`, which waits for the
    running readers and keeps new readers out until it is done. A waiting writer blocks new readers,
    so a steady stream of Generate calls cannot starve an update.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @property
    def readers(self) -> int:
        return self._readers

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing and self._writers_waiting == 0)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            async with self._cond:
                self._writing = False
                self._cond.notify_all()


__all__ = ["VersionGate"]
