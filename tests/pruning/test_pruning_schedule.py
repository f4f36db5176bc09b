"""Schedules against their formulas."""

from __future__ import annotations

import pytest

from prunesweep.pruning.schedule import GradualSchedule, iterative_targets


def test_agp_matches_zhu_and_gupta():
    s_i, s_f, t0, dt, n = 0.1, 0.95, 100, 25, 8
    schedule = GradualSchedule(final=s_f, start_step=t0, frequency=dt, n=n, initial=s_i)
    for t in range(t0, t0 + n * dt + 1, dt):
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert schedule.target(t) == pytest.approx(expected)
        assert schedule.is_update_step(t)
    assert schedule.target(0) == s_i
    assert schedule.target(10_000) == s_f
    assert not schedule.is_update_step(t0 + 1)
    # between updates the target holds the last update's value
    assert schedule.target(t0 + dt + 3) == schedule.target(t0 + dt)
    targets = [schedule.target(t) for t in range(t0, t0 + n * dt + 1, dt)]
    assert targets == sorted(targets)


def test_agp_over_a_run_finishes_at_the_requested_fraction():
    schedule = GradualSchedule.over(0.9, total_steps=1000, end_fraction=0.6, frequency=20)
    assert schedule.end_step == 600
    assert schedule.target(600) == 0.9


def test_iterative_targets_remove_the_same_fraction_each_round():
    targets = iterative_targets(0.99, 4)
    assert targets[-1] == pytest.approx(0.99)
    kept = [1.0] + [1 - t for t in targets]
    ratios = [kept[i + 1] / kept[i] for i in range(4)]
    assert ratios == pytest.approx([ratios[0]] * 4)
    with pytest.raises(ValueError, match="rounds"):
        iterative_targets(0.5, 0)
