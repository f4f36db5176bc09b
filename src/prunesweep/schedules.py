"""When to prune, as plug-ins: one function per ``pruning.schedule``, each from a :class:`ScheduleJob` to a
:class:`ScheduleResult`.

The experiment builds the job (what to prune, how to measure, how to fine-tune); a schedule only decides the
order of pruning, rewinding and fine-tuning. A new schedule is one function plus one entry in :data:`SCHEDULES`;
config validation reads the names and capabilities from there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytorch_lightning as pl
import torch
from torch import nn

from prunesweep.pruning import Importance, MaskPlan, PruningSpec, Threshold, apply_masks, compute_masks, unsplice
from prunesweep.pruning.callback import PruningCallback
from prunesweep.pruning.schedule import GradualSchedule, iterative_targets

log = logging.getLogger("prunesweep")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Finetune(Protocol):
    """How a schedule fine-tunes: train ``model`` (None: the job's masked model) with ``callbacks`` (which hold or
    update the masks) for ``steps`` optimizer steps (None: the recipe's epochs), logging per-epoch metrics under
    ``prefix``; return the optimizer steps taken."""

    def __call__(
        self,
        callbacks: Sequence[pl.Callback],
        steps: int | None = None,
        prefix: str = "",
        model: nn.Module | None = None,
    ) -> int: ...


class Prune(Protocol):
    """Compute and apply masks at a cumulative ``target`` (keeping ``previous``'s pruned units pruned, when given)
    and return the plan; ``spliced``: the pruned weights keep learning until the next call, which revises the masks
    from every weight's value (:class:`prunesweep.pruning.SplicedMask`)."""

    def __call__(self, target: float, previous: MaskPlan | None, *, spliced: bool = False) -> MaskPlan: ...


class Evaluate(Protocol):
    """Test accuracy of ``model`` as it is now (None: the job's masked model)."""

    def __call__(self, model: nn.Module | None = None) -> float: ...


@dataclass(frozen=True)
class Rebuilt:
    """The physically smaller copy of the masked model, and how far its outputs were from the masked one's when
    it was made (``rebuild/max_abs_diff``)."""

    model: nn.Module
    max_abs_diff: float


@dataclass(frozen=True)
class ScheduleJob:
    """Everything a schedule needs, with the Hydra config already read.

    ``prune(target, previous)`` computes and applies masks at a cumulative target and returns the plan;
    ``evaluate(model=None)`` is the test accuracy of a model as it is now (the masked one by default); ``rewind()``
    (None: no rewinding) resets the surviving weights to the lottery-ticket state, masks kept. ``rebuild(plan)``
    (None: fine-tune the masked model) makes the physically smaller copy that a schedule fine-tunes once its masks
    are final: a removed unit's weights are zeros that stay zeros, so training without them computes the same thing,
    for less.
    """

    model: nn.Module
    sparsity: float
    prune: Prune
    evaluate: Evaluate
    finetune: Finetune
    epochs: int  # finetune.epochs
    steps_per_epoch: int
    rounds: int = 1  # iterative
    gradual_end_fraction: float = 0.6
    gradual_frequency: int = 20
    rewind: Callable[[], None] | None = None
    rebuild: Callable[[MaskPlan], Rebuilt] | None = None

    @property
    def finetune_steps(self) -> int:
        """The fine-tuning budget every schedule gets: ``finetune.epochs`` of optimizer steps."""
        return self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class ScheduleResult:
    """What a schedule hands back."""

    plan: MaskPlan
    acc_pruned: float  # test accuracy once the final masks are applied, before the remaining fine-tuning
    finetune_steps: int  # optimizer steps of fine-tuning, all rounds together
    #: The fine-tuned rebuilt model when the job rebuilds (then the job's masked model is left as it was pruned).
    rebuilt: Rebuilt | None = None
    #: What the schedule itself measured, logged with the point's metrics (e.g. ``splicing/returned``).
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> nn.Module | None:
        """The rebuilt model that was fine-tuned, or None when the masked one was."""
        return None if self.rebuilt is None else self.rebuilt.model


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: the function, plus what config validation needs to know about it."""

    run: Callable[[ScheduleJob], ScheduleResult]
    #: Whether ``pruning.rewind`` applies. A schedule that prunes in the middle of training has no point at which
    #: resetting the weights would be the lottery-ticket procedure, so validation refuses the combination.
    rewinds: bool = True

    def __call__(self, job: ScheduleJob) -> ScheduleResult:
        return self.run(job)


def masking_prune(
    model: nn.Module,
    spec: PruningSpec,
    calib: Batches | None = None,
    threshold: Threshold | None = None,
    example_inputs: torch.Tensor | None = None,
    importance: Importance | None = None,
) -> Prune:
    """The ``prune`` of a job: masks for ``spec`` at a cumulative target (keeping ``previous`` pruned), applied.

    ``threshold`` is shared by every call, so one that measures the model (sensitivity) does so once; so is
    ``importance`` when given (one with a trained state, such as ``variational``'s).
    ``example_inputs`` (one batch of the data's image shape) is what couplings are traced on.
    """

    def prune(target: float, previous: MaskPlan | None, *, spliced: bool = False) -> MaskPlan:
        unsplice(model)  # after a spliced update, every weight's current value is scored, pruned ones included
        at_target = dataclasses.replace(spec, sparsity=target)
        plan = compute_masks(
            model,
            at_target,
            calib,
            previous=previous,
            threshold=threshold,
            example_inputs=example_inputs,
            importance=importance,
        )
        apply_masks(model, plan, spliced=spliced)
        return plan

    return prune


def split_steps(total: int, rounds: int) -> list[int]:
    """``total`` steps shared by ``rounds`` as evenly as possible, the earlier rounds taking the remainder.

    >>> split_steps(10, 3)
    [4, 3, 3]
    >>> split_steps(2, 3)
    [1, 1, 0]
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    share, extra = divmod(total, rounds)
    return [share + (1 if index < extra else 0) for index in range(rounds)]


def rebuild_final(job: ScheduleJob, plan: MaskPlan) -> Rebuilt | None:
    """The rebuilt model once the masks are final, or None when the job fine-tunes the masked one."""
    return None if job.rebuild is None else job.rebuild(plan)


def finetune_final(
    job: ScheduleJob, plan: MaskPlan, rebuilt: Rebuilt | None, steps: int | None = None, prefix: str = ""
) -> int:
    """Fine-tune once the masks are final: the rebuilt model when there is one (nothing left to hold), else the
    masked one with its masks held. Returns the optimizer steps."""
    if rebuilt is None:
        return job.finetune([PruningCallback(job.model, plan=plan)], steps=steps, prefix=prefix)
    return job.finetune([], steps=steps, prefix=prefix, model=rebuilt.model)


def oneshot(job: ScheduleJob) -> ScheduleResult:
    """Prune to the target once, rewind if asked, then fine-tune (the rebuilt model, or masks held). The pruned
    accuracy is measured on the rebuilt model when there is one: the same outputs, at a fraction of the cost."""
    plan = job.prune(job.sparsity, None)
    if job.rewind is not None:
        job.rewind()
    rebuilt = rebuild_final(job, plan)
    acc_pruned = job.evaluate(None if rebuilt is None else rebuilt.model)
    steps = finetune_final(job, plan, rebuilt)
    return ScheduleResult(plan, acc_pruned, steps, rebuilt)


def iterative(job: ScheduleJob) -> ScheduleResult:
    """Han et al.'s rounds: prune a little more (the same fraction of the survivors each round), rewind if asked
    (iterative lottery-ticket pruning), fine-tune; the rounds share one-shot's fine-tuning budget exactly.

    Only the last round fine-tunes the rebuilt model: the earlier rounds' masks are pinned by the next round's
    planning, which works on the full-size model. Each round is its own fit (fresh optimizer), so rebuilding at
    the last one changes nothing but the cost."""
    targets = iterative_targets(job.sparsity, job.rounds)
    plan: MaskPlan | None = None
    acc_pruned, steps, rebuilt = 0.0, 0, None
    for index, (target, budget) in enumerate(zip(targets, split_steps(job.finetune_steps, job.rounds), strict=True)):
        plan = job.prune(target, plan)
        if job.rewind is not None:
            job.rewind()
        last = index == job.rounds - 1
        rebuilt = rebuild_final(job, plan) if last else None
        acc_pruned = job.evaluate(None if rebuilt is None else rebuilt.model)
        log.info("round %d/%d: sparsity target %.4f, pruned accuracy %.4f", index + 1, job.rounds, target, acc_pruned)
        prefix = f"round{index + 1}/"
        if budget and last:
            steps += finetune_final(job, plan, rebuilt, steps=budget, prefix=prefix)
        elif budget:  # more rounds than steps: the last rounds prune without training in between
            steps += job.finetune([PruningCallback(job.model, plan=plan)], steps=budget, prefix=prefix)
    assert plan is not None  # rounds >= 1
    return ScheduleResult(plan, acc_pruned, steps, rebuilt)


def gradual(job: ScheduleJob) -> ScheduleResult:
    """Zhu & Gupta's AGP: the masks tighten every few steps during fine-tuning, along a cubic, then stay. When the job
    rebuilds, the steps after the last update train the rebuilt model, in the same fit (same data order, same
    optimizer state and learning-rate schedule)."""
    return _during_finetune(job, _agp(job, "gradual"), job.prune)


def splicing(job: ScheduleJob) -> ScheduleResult:
    """AGP whose masks are revised, not only tightened: until the last update the pruned weights keep learning
    from the pruned network's gradient, and every update ranks all weights again, so a pruned weight can come
    back (Guo et al. 2016's splicing, as Lin et al. 2020's dynamic pruning with feedback). The last update's
    masks are held to the end, as in every schedule."""
    agp = _agp(job, "splicing")
    returned = {"splicing/returned": 0.0}  # pruned entries that a later update kept, over all updates

    def revise(target: float, previous: MaskPlan | None) -> MaskPlan:
        plan = job.prune(target, None, spliced=target < agp.final)
        returned["splicing/returned"] += 0 if previous is None else _returned(previous, plan)
        return plan

    return dataclasses.replace(_during_finetune(job, agp, revise), metrics=returned)


def _returned(before: MaskPlan, after: MaskPlan) -> int:
    """Entries masked out by ``before`` and kept by ``after``."""
    count = 0
    for module, params in after.masks.items():
        for name, keep in params.items():
            old = before.masks.get(module, {}).get(name)
            count += 0 if old is None else int((keep & ~old.to(keep.device)).sum())
    return count


def _agp(job: ScheduleJob, name: str) -> GradualSchedule:
    if job.rewind is not None:  # config validation refuses it first; a job built by hand must not be ignored either
        raise ValueError(f"the {name} schedule does not rewind: it prunes during training (Schedule.rewinds)")
    return GradualSchedule.over(job.sparsity, job.finetune_steps, job.gradual_end_fraction, job.gradual_frequency)


def _during_finetune(
    job: ScheduleJob, agp: GradualSchedule, prune: Callable[[float, MaskPlan | None], MaskPlan]
) -> ScheduleResult:
    """One fit that prunes on ``agp``'s steps with ``prune``, then trains on (the rebuilt model, if the job
    rebuilds) with the final masks held."""
    final: dict[str, float] = {}
    made: list[Rebuilt] = []

    def rebuild(plan: MaskPlan) -> nn.Module:
        assert job.rebuild is not None
        made.append(job.rebuild(plan))
        return made[-1].model

    callback = PruningCallback(
        job.model,
        prune=prune,
        schedule=agp,
        on_final=lambda _plan: final.setdefault("pruned", job.evaluate(made[-1].model if made else None)),
        rebuild=None if job.rebuild is None else rebuild,  # the steps after the last mask update train it
    )
    steps = job.finetune([callback])
    assert callback.plan is not None  # the callback applies the final masks at the latest when training ends
    return ScheduleResult(callback.plan, final["pruned"], steps, made[-1] if made else None)


SCHEDULES: dict[str, Schedule] = {
    "oneshot": Schedule(oneshot),
    "iterative": Schedule(iterative),
    "gradual": Schedule(gradual, rewinds=False),
    "splicing": Schedule(splicing, rewinds=False),
}
