"""The shared in-flight budget: held for a block, refused past capacity, always given back."""

from __future__ import annotations

import pytest

from services.common.admission import Budget
from services.common.errors import Overloaded


def test_a_budget_is_held_for_the_block_and_refuses_what_does_not_fit() -> None:
    budget = Budget(10, "image pixels", "batching.max_pending_pixels")

    with budget.hold(6):
        assert budget.used == 6
        with pytest.raises(Overloaded, match=r"6 image pixels held .* 5 more would exceed batching.max_pending_pixels=10"):
            with budget.hold(5):
                pass
        with budget.hold(4):
            assert budget.used == 10
    assert budget.used == 0


def test_a_budget_is_given_back_when_the_block_fails() -> None:
    budget = Budget(10, "rows", "max_rows")

    with pytest.raises(RuntimeError), budget.hold(7):
        raise RuntimeError("boom")

    assert budget.used == 0
