"""The schedule registry: fine-tune budgets shared exactly, capabilities that validation reads."""

from __future__ import annotations

import pytest

from prunesweep.schedules import SCHEDULES, split_steps


@pytest.mark.parametrize("rounds", range(1, 8))
def test_split_steps_shares_the_total_exactly_and_evenly(rounds):
    for total in range(0, 60):
        shares = split_steps(total, rounds)
        assert len(shares) == rounds
        assert sum(shares) == total
        assert max(shares) - min(shares) <= 1
        assert shares == sorted(shares, reverse=True)  # earlier rounds take the remainder


def test_split_steps_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds=0"):
        split_steps(10, 0)


def test_only_schedules_that_prune_between_training_phases_rewind():
    assert {name for name, schedule in SCHEDULES.items() if schedule.rewinds} == {"oneshot", "iterative"}

