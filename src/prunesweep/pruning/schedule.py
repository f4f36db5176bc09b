"""When to prune: one shot, iterative rounds (Han et al. 2015), or gradual AGP (Zhu & Gupta 2017)."""

from __future__ import annotations

from dataclasses import dataclass


def iterative_targets(final: float, rounds: int) -> list[float]:
    """Cumulative targets that remove the same fraction of the surviving weights each round.

    >>> [round(s, 4) for s in iterative_targets(0.875, 3)]
    [0.5, 0.75, 0.875]
    """
    if rounds < 1:
        raise ValueError(f"pruning.rounds={rounds} must be >= 1")
    keep = 1.0 - final
    return [1.0 - keep ** (r / rounds) for r in range(1, rounds + 1)]


@dataclass(frozen=True)
class GradualSchedule:
    """Automated gradual pruning: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n·Δt))³.

    Masks change only every ``frequency`` (Δt) steps from ``start_step`` (t0) for ``n`` updates,
    then stay frozen at ``final``.

    >>> schedule = GradualSchedule(final=0.9, start_step=0, frequency=10, n=4)
    >>> [round(schedule.target(t), 4) for t in (0, 10, 20, 30, 40, 99)]
    [0.0, 0.5203, 0.7875, 0.8859, 0.9, 0.9]
    """

    final: float
    start_step: int
    frequency: int
    n: int
    initial: float = 0.0

    @property
    def end_step(self) -> int:
        return self.start_step + self.n * self.frequency

    def target(self, step: int) -> float:
        if step < self.start_step:
            return self.initial
        if step >= self.end_step:
            return self.final
        # Sparsity only changes at update steps, so round down to the last one.
        done = (step - self.start_step) // self.frequency * self.frequency
        progress = done / (self.n * self.frequency)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (step - self.start_step) % self.frequency == 0

    @classmethod
    def over(cls, final: float, total_steps: int, end_fraction: float, frequency: int) -> GradualSchedule:
        """Reach ``final`` after ``end_fraction`` of ``total_steps``, updating every ``frequency`` steps."""
        frequency = max(1, min(frequency, total_steps))
        n = max(1, int(end_fraction * total_steps) // frequency)
        return cls(final=final, start_step=0, frequency=frequency, n=n)
