"""A capacity shared by the calls in flight on one event loop (decoded image pixels, queued rows).

A call takes its share *before* it does the costly work and gives it back when done; a call that
would push the total past the capacity is refused at once with `Overloaded` (RESOURCE_EXHAUSTED on
the wire), so memory stays bounded however many calls arrive together. Single-loop use only: no
lock, take and release happen on the loop between awaits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from services.common.errors import Overloaded


class Budget:
    """`with budget.hold(n):` holds n units of `capacity` for the block; see the module docstring."""

    def __init__(self, capacity: int, what: str, limit_key: str) -> None:
        """`what` names the unit in messages ("image pixels"), `limit_key` the setting of `capacity`."""
        if capacity < 1:
            raise ValueError(f"{limit_key}: capacity must be >= 1")
        self.capacity = capacity
        self.what = what
        self.limit_key = limit_key
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Hold `amount` units for the block; Overloaded when they do not fit now (retry later)."""
        if amount <= 0:
            yield
            return
        if self._used + amount > self.capacity:
            raise Overloaded(f"busy: {self._used} {self.what} held by calls in flight, {amount} more would exceed "
                             f"{self.limit_key}={self.capacity}; retry later")
        self._used += amount
        try:
            yield
        finally:
            self._used -= amount


__all__ = ["Budget"]
